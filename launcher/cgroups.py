"""Resource limits through cgroups (v2, or the v1 memory/pids/cpu hierarchies), where the host allows."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from .base import Limits

log = logging.getLogger("wsgate.launcher")

ROOT = Path("/sys/fs/cgroup")
_V1 = ("memory", "pids", "cpu")
_PERIOD_US = 100_000


class Cgroups:
    """Creates one group per workspace under `wsgate/`; `available` is False when the host says no."""

    def __init__(self, root: Path = ROOT, name: str = "wsgate") -> None:
        self.root = root
        self.name = name
        self.version = 0
        self.reason = ""
        if os.geteuid() != 0:
            self.reason = "the gateway does not run as root"
        elif (root / "cgroup.controllers").is_file():
            self.version = 2
        elif all((root / c).is_dir() for c in _V1):
            self.version = 1
        else:
            self.reason = f"no cgroup v2 or v1 memory/pids/cpu hierarchy under {root}"
        if self.version:
            try:
                self._prepare()
            except OSError as e:
                self.version = 0
                self.reason = f"cannot create cgroups under {root}: {e.strerror}"

    @property
    def available(self) -> bool:
        return self.version > 0

    def _prepare(self) -> None:
        if self.version == 2:
            parent = self.root / self.name
            parent.mkdir(exist_ok=True)
            wanted = {"memory", "pids", "cpu"} & set((self.root / "cgroup.controllers").read_text().split())
            for where in (self.root, parent):
                with contextlib.suppress(OSError):
                    (where / "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(wanted)))
        else:
            for c in _V1:
                (self.root / c / self.name).mkdir(exist_ok=True)

    def _dirs(self, workspace_id: str) -> list[Path]:
        if self.version == 2:
            return [self.root / self.name / workspace_id]
        return [self.root / c / self.name / workspace_id for c in _V1]

    def create(self, workspace_id: str, limits: Limits) -> list[str]:
        """Makes the groups and sets the limits; returns the cgroup.procs files for the shim to join."""
        if not self.available:
            return []
        dirs = self._dirs(workspace_id)
        for d in dirs:
            d.mkdir(exist_ok=True)
        if self.version == 2:
            d = dirs[0]
            self._write(d / "memory.max", str(limits.memory_bytes) if limits.memory_bytes else "max")
            self._write(d / "memory.swap.max", "0" if limits.memory_bytes else "max", optional=True)
            self._write(d / "pids.max", str(limits.pids) if limits.pids else "max")
            quota = int(limits.cpus * _PERIOD_US)
            self._write(d / "cpu.max", f"{quota if quota else 'max'} {_PERIOD_US}")
        else:
            mem, pids, cpu = dirs
            self._write(mem / "memory.limit_in_bytes", str(limits.memory_bytes) if limits.memory_bytes else "-1")
            self._write(pids / "pids.max", str(limits.pids) if limits.pids else "max")
            self._write(cpu / "cpu.cfs_period_us", str(_PERIOD_US))
            quota = int(limits.cpus * _PERIOD_US)
            self._write(cpu / "cpu.cfs_quota_us", str(quota) if quota else "-1")
        return [str(d / "cgroup.procs") for d in dirs]

    @staticmethod
    def _write(path: Path, value: str, *, optional: bool = False) -> None:
        try:
            path.write_text(value)
        except OSError:
            if not optional:
                raise

    def pids(self, workspace_id: str) -> list[int]:
        out: set[int] = set()
        for d in self._dirs(workspace_id) if self.available else []:
            with contextlib.suppress(OSError):
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return sorted(out)

    def remove(self, workspace_id: str, wait: float = 2.0) -> None:
        """Removes the groups once their last process is gone (exiting tasks linger briefly)."""
        if not self.available:
            return
        deadline = time.monotonic() + wait
        for d in self._dirs(workspace_id):
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("event=cgroup_busy path=%s", d)
                        break
                    time.sleep(0.02)
