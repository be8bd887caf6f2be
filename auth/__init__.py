"""wsgate: auth room."""
