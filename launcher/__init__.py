"""wsgate: launcher room."""
