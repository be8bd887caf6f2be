"""Compiles the forwarding hot path with mypyc when a C compiler is at hand.

The modules in HOT_PATH (the proxy, its HTTP/1 and WebSocket helpers, the
guard and the metrics it counts into) are ordinary typed Python (and run as
such); compiled, they cost about a quarter less CPU per proxied request. A
machine without a compiler, or WSGATE_PURE_PYTHON=1, gets the same code
interpreted. `wsgate version` says which one is running.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_PATH = [
    "gateway/proxy.py", "gateway/http1.py", "gateway/wsframes.py", "gateway/guard.py", "gateway/metrics.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python modules in charge instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # any compiler failure means "stay interpreted"
            print(f"wsgate: hot path not compiled ({e}); it runs interpreted", file=sys.stderr)


def extensions() -> list[Any]:
    if os.environ.get("WSGATE_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    # The build environment holds only the build requirements: the runtime libraries (aiohttp,
    # cryptography...) are unknown there and typed as Any, which compiles to ordinary dynamic
    # calls. The strict checking is `make typecheck`'s job, against the installed libraries.
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as conf:
        conf.write("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    try:
        return list(mypycify([f"--config-file={conf.name}", *HOT_PATH], opt_level="3", group_name="wsgate_hot"))
    except (Exception, SystemExit) as e:  # a type error here must not stop the install
        print(f"wsgate: hot path not compiled ({e}); it runs interpreted", file=sys.stderr)
        return []
    finally:
        os.unlink(conf.name)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
