"""Load-generating client processes: start several, collect the JSON each prints as its last line."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.servers import REPO, BenchError, child_env


class Clients:
    """``count`` processes of ``python -m MODULE ARGS...``; killed (whole group) on exit."""

    def __init__(self, module: str, argvs: list[list[str]]) -> None:
        self.module = module
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv in argvs:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", module, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL, env=child_env(), cwd=REPO, start_new_session=True,
                ))
        except BaseException:
            self.kill()
            raise
        self._lines: list[list[dict[str, Any]]] = [[] for _ in self.procs]
        self._partial = [b"" for _ in self.procs]
        self._sel = selectors.DefaultSelector()
        self._open = 0
        for i, p in enumerate(self.procs):
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)
            self._sel.register(p.stdout, selectors.EVENT_READ, i)
            self._open += 1

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if hasattr(self, "_sel"):
            self._sel.close()
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()

    def signal(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    def wait_lines(self, count: int, timeout: float) -> list[list[dict[str, Any]]]:
        """Waits until every process printed ``count`` JSON lines; returns all lines per process so far."""
        self._pump(timeout, lambda: all(len(ls) >= count for ls in self._lines))
        if any(len(ls) < count for ls in self._lines):
            raise BenchError(f"{self.module} clients exited without a result{self._stderr()}")
        return self._lines

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Reads every process's output to its end; returns each one's last JSON line."""
        self._pump(timeout, lambda: False)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        if any(not ls for ls in self._lines):
            raise BenchError(f"{self.module} clients exited without a result{self._stderr()}")
        return [ls[-1] for ls in self._lines]

    def _pump(self, timeout: float, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while self._open and not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.module} clients: no result after {timeout:.0f}s{self._stderr()}")
            for key, _ in self._sel.select(min(left, 1.0)):
                i = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self._sel.unregister(key.fileobj)
                    self._open -= 1
                    continue
                self._partial[i] += chunk
                *complete, self._partial[i] = self._partial[i].split(b"\n")
                for line in complete:
                    if line.strip().startswith(b"{"):
                        self._lines[i].append(json.loads(line))

    def _stderr(self) -> str:
        out = []
        for p in self.procs:
            if p.poll() is None:
                continue
            assert p.stderr is not None
            try:
                os.set_blocking(p.stderr.fileno(), False)
                err = p.stderr.read() or b""
            except (OSError, ValueError):
                err = b""
            if err.strip():
                out.append(err.decode(errors="replace").strip()[-1500:])
        return (":\n" + "\n---\n".join(out)) if out else ""
