"""wsgate: routing room."""
