"""wsgate: gateway room."""
