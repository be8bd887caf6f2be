"""Running wrk and reading its report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

WRK = "/usr/bin/wrk"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # "50", "75", "90", "99" -> ms
    transfer_per_sec: str = ""
    output: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(output: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m or not rps:
        raise ValueError(f"unrecognised wrk output:\n{output}")
    res = WrkResult(int(m.group(1)), _ms(m.group(2), m.group(3)) / 1000, float(rps.group(1)), output=output)
    if non := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        res.non_2xx = int(non.group(1))
    if sock := re.search(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        res.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M):
        res.latency_ms[pct] = _ms(value, unit)
    if tr := re.search(r"Transfer/sec:\s+(\S+)", output):
        res.transfer_per_sec = tr.group(1)
    return res


def run(url: str, host: str, *, connections: int, threads: int, duration: float, latency: bool = False,
        headers: tuple[str, ...] = (), timeout_s: int = 5) -> WrkResult:
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--timeout", f"{timeout_s}s", "-H", f"Host: {host}"]
    for h in headers:
        argv += ["-H", h]
    if latency:
        argv.append("--latency")
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse(proc.stdout)
