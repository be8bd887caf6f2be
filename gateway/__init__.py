"""wsgate: gateway room."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("wsgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Compiled together by mypyc when installed with a compiler (setup.py); imported in this order.
HOT_PATH = ("gateway.wsframes", "gateway.http1", "gateway.metrics", "gateway.guard", "gateway.proxy")


def _source_over_stale_build() -> None:
    """In a source checkout, a hot-path module edited after the last build must not be shadowed by
    the old compiled one (Python prefers the extension): then all of them load from source. They are
    compiled as one unit, so one stale module means none of the compiled ones may be used."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return  # an installed package: its files are what was built

    def source(name: str) -> Path:
        return root.joinpath(*name.split(".")).with_suffix(".py")

    def stale(name: str) -> bool:
        path = source(name)
        built = list(path.parent.glob(f"{path.stem}.cpython-*.so"))
        return bool(built) and built[0].stat().st_mtime < path.stat().st_mtime

    if not any(stale(name) for name in HOT_PATH):
        return
    for name in HOT_PATH:
        spec = importlib.util.spec_from_file_location(name, source(name))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        package, _, attr = name.rpartition(".")
        if package in sys.modules:
            setattr(sys.modules[package], attr, module)
    print(
        "wsgate: the compiled hot path is older than its source; running the source (make install rebuilds it)",
        file=sys.stderr,
    )


def hot_path_compiled() -> bool:
    """Whether the forwarding hot path runs compiled (mypyc) rather than interpreted."""
    from gateway import proxy

    return not (proxy.__file__ or "").endswith(".py")


_source_over_stale_build()
