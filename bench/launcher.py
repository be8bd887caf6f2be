"""The embedded launcher, against a real gateway signed in through the dev login:

1. start time: ``POST /api/v1/workspaces`` to the first 200 proxied from the workspace's port;
2. throughput: the same upstream program (nginx, same configuration) inside a workspace and on
   host loopback (a static ``[[workspaces]]`` route), through the same gateway, interleaved rounds;
3. memory: many idle workspaces at once; growth of the gateway's RSS, and the shim + init processes.

The gateway is ``tests/wsgate_testing.Gateway`` (the test suite's helper); every workspace is
deleted, the gateway stopped (``stop_on_exit``) and any shim/init left of this run killed, even on
error or interrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench import wrk
from bench.benchmarks import Options, progress
from bench.memory import cpu_seconds
from bench.report import BenchResult, Metric, fmt
from bench.servers import NGINX, REPO, BenchError, Proc, free_port, wait_port

# The test suite's helpers (a real gateway process, the dev sign-in); appended, not prepended:
# tests/ holds directories named like the real packages (gateway/, launcher/...).
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))

from signin_client import Browser, LoopbackResolver, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

DESCRIPTION = "embedded launcher: workspace start time, workspace port vs host loopback throughput, memory"

START_TARGET_MS = 300.0
THROUGHPUT_TARGET = 0.9
HOST_REF = "hostref"  # the static workspace that points at the upstream on host loopback
UP_PORT = 8080  # the workspace port of the throughput upstream (inside the workspace and in the host name)
START_PORT = 8000
BIG_MIB = 64
POLL_S = 0.005
START_TIMEOUT_S = 15.0
INIT_PREFIX = "wsgate-init-"
CGROUP_ROOT = Path("/sys/fs/cgroup")

# The upstream of the throughput comparison: nginx, the same configuration and command line in the
# workspace (prefix /tmp/up, a tmpfs there) and on the host (prefix in the run directory).
_NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {prefix}/www;
        location = / {{ default_type text/plain; return 200 "hello"; }}
        location /files/ {{ default_type application/octet-stream; }}
    }}
}}
"""


def nginx_command(prefix: str, port: int, big_mib: int = 0) -> str:
    """A shell command that writes the configuration (and a ``big_mib`` MiB file) and runs nginx in the foreground."""
    conf = _NGINX_CONF.format(prefix=prefix, port=port)
    steps = [f"mkdir -p {prefix}/tmp {prefix}/www/files"]
    if big_mib:
        steps.append(f"head -c {big_mib}M /dev/zero > {prefix}/www/files/big.bin")
    steps.append(f"printf '%s' {shlex.quote(conf)} > {prefix}/nginx.conf")
    steps.append(f"exec {NGINX} -e stderr -p {prefix}/ -c {prefix}/nginx.conf -g 'daemon off;'")
    return " && ".join(steps)


_TINY_PY = r"""import socket
s = socket.create_server(("127.0.0.1", 8000))
r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(r)
    c.close()
"""

# What the start-time runs start, in this order each iteration; the first is the one with the target.
START_VARIANTS: dict[str, str] = {
    "python3 -m http.server": f"exec python3 -m http.server {START_PORT} --bind 127.0.0.1",
    "tiny python socket server (-I -S)": f"exec python3 -I -S -c {shlex.quote(_TINY_PY)}",
    "nginx (native, no busybox here)": nginx_command("/tmp/n", START_PORT),
}
TARGET_VARIANT = "python3 -m http.server"


@dataclass
class Plan:
    starts: int  # per start variant
    idle: int  # workspaces running at once
    rounds: int  # throughput rounds (each: workspace and host, alternating order)
    duration: float  # seconds per wrk run
    warmup: float
    downloads: int  # BIG_MIB downloads per round and side

    @classmethod
    def of(cls, opts: Options) -> Plan:
        if opts.quick:
            return cls(starts=5, idle=10, rounds=opts.rounds, duration=opts.duration, warmup=opts.warmup,
                       downloads=2)
        return cls(starts=20, idle=50, rounds=opts.rounds, duration=opts.duration, warmup=opts.warmup,
                   downloads=4)


def gateway_toml(host_upstream_port: int) -> str:
    return f"""
[auth]
dev_login = true

[launcher]
stop_on_exit = true
stop_grace = 2

[log]
access_log = false

[[workspaces]]
id = "{HOST_REF}"
port = {UP_PORT}
upstream = "127.0.0.1:{host_upstream_port}"
owner = "dev:alice"
"""


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def ws_host(workspace: str, port: int) -> str:
    return f"{port}-{workspace}.ws.{DOMAIN}"


# --- the API client ---------------------------------------------------------------------------------


class Api:
    """Bearer-token requests to the gateway, on keep-alive connections (every name is 127.0.0.1)."""

    def __init__(self, gw: Gateway, token: str) -> None:
        self.gw = gw
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"}
        ctx = ssl.create_default_context(cafile=str(gw.ca))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, resolver=LoopbackResolver(), limit=0),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = dict(self.auth)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        async with self.session.request(method, self.gw.url(DOMAIN, path), data=data, headers=headers) as resp:
            raw = await resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    async def get(self, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
        async with self.session.get(self.gw.url(host, path), headers=self.auth,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()

    async def create(self, command: str, ports: list[int]) -> dict[str, Any]:
        status, data = await self.call("POST", "/api/v1/workspaces", {"command": command, "ports": ports})
        if status != 201:
            raise BenchError(f"POST /api/v1/workspaces answered {status}: {data}")
        return dict(data)

    async def delete(self, workspace_id: str) -> None:
        status, data = await self.call("DELETE", f"/api/v1/workspaces/{workspace_id}")
        if status not in (204, 404):
            raise BenchError(f"DELETE workspace {workspace_id} answered {status}: {data}")

    async def workspace_ids(self) -> list[str]:
        status, data = await self.call("GET", "/api/v1/workspaces")
        if status != 200:
            raise BenchError(f"GET /api/v1/workspaces answered {status}: {data}")
        return [w["id"] for w in data["workspaces"]]

    async def wait_ok(self, host: str, path: str = "/", timeout: float = START_TIMEOUT_S,
                      interval: float = POLL_S) -> tuple[int, Counter[int], bytes]:
        """Polls until 200: (polls, statuses seen before, body). 502 = nothing listens there yet."""
        seen: Counter[int] = Counter()
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            polls += 1
            try:
                status, body = await self.get(host, path)
            except (aiohttp.ClientError, TimeoutError) as e:
                status, body = -1, str(e).encode()
            if status == 200:
                return polls, seen, body
            seen[status] += 1
            if time.monotonic() > deadline:
                raise BenchError(f"https://{host}/ did not answer 200 within {timeout:g}s: {dict(seen)}, "
                                 f"last {status} {body[:200]!r}")
            await asyncio.sleep(interval)


async def sign_in(gw: Gateway) -> str:
    """Dev login as alice, then a bearer token with the api and workspace scopes."""
    async with Browser(str(gw.ca)) as b:
        visit = await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), "alice")
        if visit.status != 200:
            raise BenchError(f"dev sign-in ended with {visit.status} at {visit.url}")
        me = await b.go(gw.url(DOMAIN, "/api/v1/me"))
        if me.status != 200:
            raise BenchError(f"/api/v1/me answered {me.status}: {me.text[:200]}")
        csrf = json.loads(me.text)["csrf_token"]
        made = await b.go(gw.url(DOMAIN, "/api/v1/tokens"), "POST",
                          data=json.dumps({"name": "bench", "scopes": ["api", "workspace"]}),
                          headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        if made.status != 201:
            raise BenchError(f"POST /api/v1/tokens answered {made.status}: {made.text[:200]}")
        return str(json.loads(made.text)["token"])


# --- processes --------------------------------------------------------------------------------------


def init_processes(state_dir: Path) -> list[psutil.Process]:
    """The shims and inits of this gateway's workspaces: ``wsgate-init-*`` with a run dir under ``state_dir``."""
    marker = str(state_dir)
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and os.path.basename(cmd[0]).startswith(INIT_PREFIX) and any(marker in a for a in cmd):
            found.append(p)
    return found


def kill_leftovers(state_dir: Path) -> int:
    """Kills what the gateway left of this run's workspaces (it stops them itself unless it died), and
    removes their cgroups (the launcher removes them when a workspace ends; here nobody will)."""
    procs = init_processes(state_dir)
    ids: set[str] = set()
    for p in procs:
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            cmd = p.cmdline()
            ids.add(cmd[cmd.index("-n") + 1])
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5)
    for wid in ids:
        groups = [CGROUP_ROOT / "wsgate" / wid, *(CGROUP_ROOT / c / "wsgate" / wid for c in ("memory", "pids", "cpu"))]
        for group in groups:
            with contextlib.suppress(OSError):
                group.rmdir()
    return len(procs)


@dataclass
class Memory:
    rss_kib: int
    pss_kib: int
    processes: int
    fds: int = 0


def gateway_memory(pid: int) -> Memory:
    p = psutil.Process(pid)
    full = p.memory_full_info()
    return Memory(full.rss // 1024, full.pss // 1024, 1, p.num_fds())


def init_memory(state_dir: Path) -> Memory:
    rss = pss = n = 0
    for p in init_processes(state_dir):
        with contextlib.suppress(psutil.Error):
            full = p.memory_full_info()
            rss += full.rss
            pss += full.pss
            n += 1
    return Memory(rss // 1024, pss // 1024, n)


# --- the measurements -------------------------------------------------------------------------------


@dataclass
class StartStats:
    total_ms: list[float] = field(default_factory=list)  # POST sent -> first 200
    post_ms: list[float] = field(default_factory=list)  # POST round trip (the launcher's start path)
    delete_ms: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


async def measure_starts(api: Api, plan: Plan) -> dict[str, StartStats]:
    stats = {name: StartStats() for name in START_VARIANTS}
    # One throwaway start first: the first workspace pays for cold caches (python's .pyc, the base's dentries).
    await start_once(api, START_VARIANTS[TARGET_VARIANT], StartStats())
    for i in range(plan.starts):
        for name, command in START_VARIANTS.items():
            await start_once(api, command, stats[name])
        line = ", ".join(f"{name.split(' (')[0]} {stats[name].total_ms[-1]:.0f}" for name in START_VARIANTS)
        progress(f"start {i + 1}/{plan.starts} (ms to first 200): {line}")
    return stats


async def start_once(api: Api, command: str, st: StartStats) -> None:
    t0 = time.perf_counter()
    w = await api.create(command, [START_PORT])
    t_post = time.perf_counter()
    try:
        polls, seen, _ = await api.wait_ok(ws_host(w["id"], START_PORT))
        t_ok = time.perf_counter()
    finally:
        t_del = time.perf_counter()
        await api.delete(w["id"])
        st.delete_ms.append((time.perf_counter() - t_del) * 1000)
    st.total_ms.append((t_ok - t0) * 1000)
    st.post_ms.append((t_post - t0) * 1000)
    st.polls.append(polls)
    st.statuses.update(seen)


@dataclass
class Throughput:
    rps: dict[str, list[float]] = field(default_factory=lambda: {"workspace": [], "host": []})
    cpu_us: dict[str, list[float]] = field(default_factory=lambda: {"workspace": [], "host": []})
    mbs: dict[str, list[float]] = field(default_factory=lambda: {"workspace": [], "host": []})
    cpu_ms_per_mib: dict[str, list[float]] = field(default_factory=lambda: {"workspace": [], "host": []})


def curl_downloads(gw: Gateway, host: str, token: str, count: int) -> float:
    """``count`` downloads of the big file on one keep-alive connection; MB/s over all of them."""
    fmt_w = "%{http_code} %{size_download} %{time_total}\\n"
    url = gw.url(host, "/files/big.bin")
    argv = ["curl", "-sS", "--http1.1", "--cacert", str(gw.ca), "--connect-to", f"{host}:{gw.port}:127.0.0.1:{gw.port}",
            "-H", f"Authorization: Bearer {token}", "-w", fmt_w, "--max-time", "120"]
    for _ in range(count):
        argv += ["-o", "/dev/null", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        raise BenchError(f"curl {url} failed ({proc.returncode}): {proc.stderr.strip()}")
    size = BIG_MIB << 20
    total_bytes, total_s = 0, 0.0
    rows = [line.split() for line in proc.stdout.strip().splitlines()]
    for code, got, seconds in rows:
        if code != "200" or int(got) != size:
            raise BenchError(f"{url}: status {code} with {got} of {size} bytes")
        total_bytes += int(got)
        total_s += float(seconds)
    if len(rows) != count:
        raise BenchError(f"{url}: {len(rows)} of {count} downloads reported:\n{proc.stdout}")
    return total_bytes / total_s / 1e6


async def measure_throughput(api: Api, gw: Gateway, wid: str, plan: Plan) -> Throughput:
    hosts = {"workspace": ws_host(wid, UP_PORT), "host": ws_host(HOST_REF, UP_PORT)}
    # Both must serve the same thing before anything is measured.
    for side, host in hosts.items():
        status, body = await api.get(host, "/")
        if status != 200 or body != b"hello":
            raise BenchError(f"{side} ({host}): GET / answered {status} {body[:100]!r}")
        async with api.session.head(gw.url(host, "/files/big.bin"), headers=api.auth) as resp:
            length = int(resp.headers.get("Content-Length", "-1"))
            if resp.status != 200 or length != BIG_MIB << 20:
                raise BenchError(f"{side} ({host}): HEAD /files/big.bin answered {resp.status}, length {length}")
    url = f"https://127.0.0.1:{gw.port}/"
    header = (f"Authorization: Bearer {api.token}",)
    pid = gw.proc.pid if gw.proc else 0

    def run_wrk(side: str, duration: float) -> wrk.WrkResult:
        out = wrk.run(url, hosts[side], connections=64, threads=2, duration=duration, headers=header)
        if out.errors or not out.requests:
            raise BenchError(f"{side}: wrk saw {out.non_2xx} non-2xx/3xx, socket errors {out.socket_errors} in "
                             f"{out.requests} requests:\n{out.output}\ngateway log:\n{gw.logs()[-2000:]}")
        return out

    for side in hosts:
        await asyncio.to_thread(run_wrk, side, plan.warmup)
    result = Throughput()
    for r in range(plan.rounds):
        order = ("workspace", "host") if r % 2 == 0 else ("host", "workspace")
        for side in order:
            cpu0 = cpu_seconds([pid])
            out = await asyncio.to_thread(run_wrk, side, plan.duration)
            used = cpu_seconds([pid]) - cpu0
            result.rps[side].append(out.rps)
            result.cpu_us[side].append(used / out.requests * 1e6)
            progress(f"round {r + 1}/{plan.rounds} {side:9}: {out.rps:,.0f} req/s, gateway CPU "
                     f"{used / out.requests * 1e6:.0f} us/req")
        # Downloads alternate one by one: a machine whose load changes affects both sides alike.
        speeds: dict[str, list[float]] = {"workspace": [], "host": []}
        for _ in range(plan.downloads):
            for side in order:
                cpu0 = cpu_seconds([pid])
                speed = await asyncio.to_thread(curl_downloads, gw, hosts[side], api.token, 1)
                used = cpu_seconds([pid]) - cpu0
                speeds[side].append(speed)
                result.mbs[side].append(speed)
                result.cpu_ms_per_mib[side].append(used * 1000 / BIG_MIB)
        progress(f"round {r + 1}/{plan.rounds} {BIG_MIB} MiB downloads (MB/s): " + "; ".join(
            f"{side} " + ", ".join(f"{v:,.0f}" for v in speeds[side]) for side in order))
    return result


@dataclass
class ManyResult:
    count: int
    start_s: float
    delete_s: float
    post_ms: list[float]
    gw_before: Memory
    gw_after: Memory
    gw_after_delete: Memory
    init: Memory
    init_after_delete: int


async def measure_many(api: Api, gw: Gateway, state_dir: Path, plan: Plan) -> ManyResult:
    pid = gw.proc.pid if gw.proc else 0
    await asyncio.sleep(1.0)
    before = gateway_memory(pid)
    ids: list[str] = []
    post_ms: list[float] = []
    t0 = time.perf_counter()
    try:
        for _ in range(plan.idle):
            t = time.perf_counter()
            w = await api.create("exec sleep infinity", [])
            post_ms.append((time.perf_counter() - t) * 1000)
            ids.append(w["id"])
            if w["state"] != "running":
                raise BenchError(f"workspace {w['id']} is {w['state']} after its start: {w}")
        start_s = time.perf_counter() - t0
        await asyncio.sleep(1.5)
        after = gateway_memory(pid)
        init = init_memory(state_dir)
        progress(f"{plan.idle} idle workspaces started in {start_s:.1f}s; gateway RSS {before.rss_kib / 1024:.1f} -> "
                 f"{after.rss_kib / 1024:.1f} MiB, fds {before.fds} -> {after.fds}; {init.processes} shim/init "
                 f"processes, RSS {init.rss_kib / 1024:.1f} MiB, PSS {init.pss_kib / 1024:.1f} MiB")
    finally:
        # One after another: concurrent deletions would open more API connections and blur the fd count.
        t1 = time.perf_counter()
        await gather_limited([partial(api.delete, i) for i in ids], 1)
        delete_s = time.perf_counter() - t1
    await asyncio.sleep(0.5)
    return ManyResult(plan.idle, start_s, delete_s, post_ms, before, after, gateway_memory(pid), init,
                      len(init_processes(state_dir)))


async def gather_limited(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} of {len(jobs)} deletions failed, first: {errors[0]!r}")


# --- the benchmark ----------------------------------------------------------------------------------


def launcher(opts: Options, res: BenchResult) -> None:
    if os.geteuid() != 0:
        res.details.append("not root: the workspaces run unprivileged (weaker isolation), figures still valid")
    plan = Plan.of(opts)
    workdir = opts.rundir / "launcher"
    gw_dir = workdir / "gateway"
    gw_dir.mkdir(parents=True, exist_ok=True)
    state_dir = gw_dir / "state"
    host_port = free_port()
    gw = Gateway(gw_dir, gateway_toml(host_port))
    up = Proc("launcher-host-upstream", ["/bin/sh", "-c", nginx_command(str(workdir / "host-up"), host_port, BIG_MIB)],
              workdir / "host-upstream.log")
    left = 0
    try:
        wait_port(host_port, up)
        progress("starting the gateway (the first start builds wsgate-init)")
        gw.start()
        asyncio.run(_measure(res, plan, gw, state_dir))
    finally:
        try:
            gw.stop(timeout=60)
        finally:
            left = kill_leftovers(state_dir)
            up.stop()
    if left:
        raise BenchError(f"{left} wsgate-init processes were still running after the gateway stopped (killed)")


async def _measure(res: BenchResult, plan: Plan, gw: Gateway, state_dir: Path) -> None:
    token = await sign_in(gw)
    api = Api(gw, token)
    try:
        await _run(res, plan, api, gw, state_dir)
    finally:
        # Whatever the failure, no workspace of this run outlives it.
        with contextlib.suppress(Exception):
            ids = await asyncio.wait_for(api.workspace_ids(), 30)
            if ids:
                progress(f"cleaning up {len(ids)} workspaces")
                await asyncio.wait_for(gather_limited([partial(api.delete, i) for i in ids], 10), 120)
        await api.close()


async def _run(res: BenchResult, plan: Plan, api: Api, gw: Gateway, state_dir: Path) -> None:
    res.details.append(
        "gateway: tests/wsgate_testing.Gateway, 1 worker, [launcher] stop_on_exit, stop_grace 2, access log off; "
        "signed in as dev:alice, bearer token (api, workspace) on keep-alive connections"
    )
    # 1. start time
    progress(f"start time: {plan.starts} starts of each of {len(START_VARIANTS)} servers, polled every "
             f"{POLL_S * 1000:g} ms")
    starts = await measure_starts(api, plan)

    # 2. throughput
    progress("throughput: nginx in a workspace vs the same nginx command on host loopback")
    t0 = time.perf_counter()
    w = await api.create(nginx_command("/tmp/up", UP_PORT, BIG_MIB), [UP_PORT])
    await api.wait_ok(ws_host(w["id"], UP_PORT), timeout=30, interval=0.02)
    progress(f"upstream workspace {w['id']} serving after {(time.perf_counter() - t0) * 1000:.0f} ms")
    try:
        tp = await measure_throughput(api, gw, w["id"], plan)
    finally:
        await api.delete(w["id"])

    # 3. many workspaces
    progress(f"memory: {plan.idle} idle workspaces (exec sleep infinity)")
    many = await measure_many(api, gw, state_dir, plan)

    report(res, plan, starts, tp, many)


def report(res: BenchResult, plan: Plan, starts: dict[str, StartStats], tp: Throughput, many: ManyResult) -> None:
    lines: list[str] = []
    med = statistics.median

    lines.append(f"start: POST /api/v1/workspaces -> first 200 through https://{START_PORT}-<id>.ws.{DOMAIN}/ "
                 f"({plan.starts} starts each, polled every {POLL_S * 1000:g} ms, 502 = not listening yet)")
    head = ("server in the workspace", "median ms", "p95 ms", "POST ms", "delete ms", "polls", "target")
    rows = []
    for name, st in starts.items():
        target = ""
        if name == TARGET_VARIANT:
            ok = med(st.total_ms) < START_TARGET_MS
            target = f"< {START_TARGET_MS:g} ms: {'PASS' if ok else 'MISS'}"
        rows.append((name, f"{med(st.total_ms):.1f}", f"{percentile(st.total_ms, 95):.1f}",
                     f"{med(st.post_ms):.1f}", f"{med(st.delete_ms):.1f}", f"{med(st.polls):.0f}", target))
    lines += _table(head, rows)
    seen = Counter[int]()
    for st in starts.values():
        seen.update(st.statuses)
    lines.append("  answers before the first 200: " + (", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
                                                      or "none"))

    lines.append("")
    lines.append(f"throughput: nginx upstream (same command) in a workspace vs on host loopback, same gateway; "
                 f"wrk 64 connections 2 threads {plan.duration:g}s, medians of {plan.rounds} interleaved rounds; "
                 f"{plan.rounds * plan.downloads} curl downloads of {BIG_MIB} MiB per side, alternating, medians; "
                 "workspace/host is the median of each pair's own ratio, as in the summary table")
    head = ("", "workspace", "host", "workspace/host", "target")
    rows = []
    for label, vals, target in (("small GET (req/s)", tp.rps, THROUGHPUT_TARGET),
                                (f"{BIG_MIB} MiB download (MB/s)", tp.mbs, THROUGHPUT_TARGET),
                                ("gateway CPU per small GET (us)", tp.cpu_us, None),
                                ("gateway CPU per MiB downloaded (ms)", tp.cpu_ms_per_mib, None)):
        ws, host = med(vals["workspace"]), med(vals["host"])
        # The summary table's comparison (pairs run back to back), so that both say the same.
        ratio = Metric(label, "", "info", rounds={"nginx": vals["host"], "wsgate": vals["workspace"]}).compared
        ratio = float("nan") if ratio is None else ratio
        verdict = "" if target is None else f">= {target:.2f}: {'PASS' if ratio >= target else 'MISS'}"
        rows.append((label, fmt(ws), fmt(host), f"{ratio:.2f}x", verdict))
    lines += _table(head, rows)

    lines.append("")
    n = many.count
    lines.append(f"{n} idle workspaces (exec sleep infinity): started one after another in {many.start_s:.1f}s "
                 f"(POST median {med(many.post_ms):.1f} ms, first 5 {med(many.post_ms[:5]):.1f}, last 5 "
                 f"{med(many.post_ms[-5:]):.1f}), deleted one after another in {many.delete_s:.1f}s")
    g_rss = (many.gw_after.rss_kib - many.gw_before.rss_kib) / n
    g_pss = (many.gw_after.pss_kib - many.gw_before.pss_kib) / n
    head = ("per workspace", "RSS KiB", "PSS KiB", "")
    rows = [
        ("gateway process growth", f"{g_rss:.1f}", f"{g_pss:.1f}",
         f"{many.gw_before.rss_kib / 1024:.1f} -> {many.gw_after.rss_kib / 1024:.1f} MiB RSS; fds "
         f"{many.gw_before.fds} -> {many.gw_after.fds} ({(many.gw_after.fds - many.gw_before.fds) / n:.1f}/workspace)"),
        ("shim + init processes", f"{many.init.rss_kib / n:.1f}", f"{many.init.pss_kib / n:.1f}",
         f"{many.init.processes} processes ({many.init.processes / n:.1f}/workspace)"),
    ]
    lines += _table(head, rows)
    lines.append(f"  after deleting them: gateway RSS {many.gw_after_delete.rss_kib / 1024:.1f} MiB, fds "
                 f"{many.gw_after_delete.fds}, {many.init_after_delete} shim/init processes left")

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines.append(f"  loadavg at the end: {load} on {os.cpu_count()} CPUs (other work on the machine moves req/s and "
                 "MB/s; the gateway CPU per request / per MiB moves less)")
    print(flush=True)
    for line in lines:
        progress(line)
    res.details += lines

    # The summary table: for the throughput rows the nginx column holds the host-loopback figure.
    res.details.append("summary table, launcher rows: 'wsgate' = workspace figure; for the throughput ratios "
                       "'nginx' = the same upstream on host loopback through the same gateway")
    target = starts[TARGET_VARIANT]
    m = res.metric(f"start to first 200, {TARGET_VARIANT}", "ms", "abs<", START_TARGET_MS)
    m.rounds["wsgate"] = list(target.total_ms)
    m = res.metric(f"start p95, {TARGET_VARIANT}", "ms", "info")
    m.rounds["wsgate"] = [percentile(target.total_ms, 95)]
    for name, st in starts.items():
        if name != TARGET_VARIANT:
            res.metric(f"start to first 200, {name}", "ms", "info").rounds["wsgate"] = list(st.total_ms)
    for label, unit, vals in (("small GET, workspace vs host", "req/s", tp.rps),
                              (f"{BIG_MIB} MiB download, workspace vs host", "MB/s", tp.mbs)):
        m = res.metric(label, unit, "ratio>=", THROUGHPUT_TARGET)
        m.rounds["nginx"] = list(vals["host"])
        m.rounds["wsgate"] = list(vals["workspace"])
    res.metric("gateway RSS per idle workspace", "KiB", "info").rounds["wsgate"] = [g_rss]
    res.metric("shim+init RSS per idle workspace", "KiB", "info").rounds["wsgate"] = [many.init.rss_kib / n]
    res.metric("shim+init PSS per idle workspace", "KiB", "info").rounds["wsgate"] = [many.init.pss_kib / n]


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = []
    for n, row in enumerate([head, *rows]):
        cells = [c.ljust(widths[i]) if i == 0 or i == len(row) - 1 else c.rjust(widths[i]) for i, c in enumerate(row)]
        out.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out
