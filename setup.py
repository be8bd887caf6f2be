"""Compiles the forwarding hot path with mypyc when a C compiler is at hand.

gateway/proxy.py, gateway/http1.py and gateway/wsframes.py are ordinary typed
Python (and run as such); compiled, they cost about a fifth less CPU per
proxied request. A machine without a compiler, or WSGATE_PURE_PYTHON=1, gets
the same code interpreted. `wsgate version` says which one is running.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_PATH = ["gateway/proxy.py", "gateway/http1.py", "gateway/wsframes.py", "gateway/guard.py"]


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
    return list(mypycify(HOT_PATH, opt_level="3", group_name="wsgate_hot"))


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
