"""Builds the workspace shim/init (init.c) once per source version, with the host's C compiler.

The binary is small and has no dependencies; it runs on the host (the container's
PID 1 is a clone of it, not an exec), so it never needs to exist inside a base.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .base import LauncherError

SOURCE = Path(__file__).with_name("init.c")


def init_binary(bin_dir: Path) -> Path:
    """The path of the built init, compiling it if this source version has no binary yet.

    WSGATE_INIT_DIR, when set, names a directory shared by several state
    directories (the test suite starts hundreds of gateways).
    """
    bin_dir = Path(os.environ.get("WSGATE_INIT_DIR") or bin_dir)
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = bin_dir / f"wsgate-init-{digest}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise LauncherError(
            "the embedded launcher needs a C compiler to build its init once (install gcc), "
            "or turn the launcher off with [launcher] enabled = false"
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(bin_dir, 0o755)
    tmp = bin_dir / f".{target.name}.{os.getpid()}.tmp"
    base = [cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)]
    errors = ""
    for extra in (["-static"], []):
        done = subprocess.run(base[:2] + extra + base[2:], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
            for old in bin_dir.glob("wsgate-init-*"):
                if old != target:
                    old.unlink(missing_ok=True)
            return target
        errors = done.stderr.strip()
    tmp.unlink(missing_ok=True)
    raise LauncherError(f"building the workspace init with {cc} failed:\n{errors[-2000:]}")
