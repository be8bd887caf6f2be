"""wsgate: auth room."""

# Some of this package is compiled with the gateway's hot path: importing `gateway` first lets its
# stale-build check (gateway/__init__.py) run before any of those modules can load.
import gateway  # noqa: F401
