"""The benchmarks. Each starts its own stack (upstreams, nginx, wsgate), checks that both proxies
answer correctly, then measures them interleaved, round after round, and fills a BenchResult."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.fanout import Clients
from bench.memory import RssSampler, cpu_seconds, footprint, process_tree
from bench.report import PROXIES, BenchResult
from bench.servers import (
    BIG_FILE,
    HTTP_HOST,
    SESSION_HOST,
    SINK_HOST,
    SMALL_BODY,
    WS_HOST,
    BenchError,
    Stack,
    https_request,
)


@dataclass
class Options:
    quick: bool
    rounds: int
    duration: float  # wrk seconds per round
    client_duration: float  # WebSocket / TLS client seconds per round
    warmup: float
    workers: int
    ws_conns: int
    client_procs: int
    idle_conns: int
    idle_rounds: int
    idle_procs: int
    stream_mib: int
    stream_rounds: int
    rundir: Path
    state_dir: Path


def progress(text: str) -> None:
    print(f"    {text}", flush=True)


@contextmanager
def stack(opts: Options, name: str, **kw: object) -> Iterator[Stack]:
    kw.setdefault("workers", opts.workers)
    with Stack(opts.rundir / name, opts.state_dir, **kw) as st:  # type: ignore[arg-type]
        yield st


def interleaved(rounds: int, fn: Callable[[str, int], None]) -> None:
    """Runs ``fn(proxy, round)`` for both proxies each round; the order alternates (nginx first in round 1)."""
    for r in range(rounds):
        for proxy in PROXIES if r % 2 == 0 else PROXIES[::-1]:
            fn(proxy, r)


class CpuMeter:
    """CPU seconds used by a proxy's processes (master/supervisor and workers) between start and stop."""

    def __init__(self, root: int) -> None:
        self.pids = process_tree(root)
        self.start = [cpu_seconds([pid]) for pid in self.pids]
        self.used: list[float] = []

    def stop(self) -> float:
        self.used = [cpu_seconds([pid]) - t0 for pid, t0 in zip(self.pids, self.start, strict=True)]
        return sum(self.used)

    def split(self) -> str:
        """CPU seconds per process, e.g. to show that every worker served."""
        return "/".join(f"{u:.2f}" for u in self.used)


def check_http(st: Stack, res: BenchResult, path: str, expect: bytes, *, host: str = HTTP_HOST,
               headers: tuple[str, ...] = ()) -> None:
    """Both proxies must answer 200 with the expected body, with wsgate's certificate, verified against its CA."""
    certs = {}
    for proxy in PROXIES:
        try:
            resp = https_request(st.ports[proxy], host, path, ca=st.ca, headers=headers)
        except OSError as e:
            raise BenchError(f"{proxy}: request for {path} failed: {e}") from None
        if resp.status != 200 or resp.body != expect:
            raise BenchError(f"{proxy}: {path} answered {resp.status} with {len(resp.body)} bytes "
                             f"{resp.body[:80]!r}, expected 200 with {len(expect)} bytes")
        certs[proxy] = resp.peer_cert
        res.details.append(f"check {proxy}: GET {path} -> 200, {len(resp.body)} bytes as expected; "
                           f"{resp.tls_version} {resp.cipher}; certificate verified against wsgate's local CA")
    if certs["nginx"] != certs["wsgate"]:
        raise BenchError("nginx and wsgate present different certificates")


def check_wrk(proxy: str, out: wrk.WrkResult, st: Stack | None = None) -> None:
    if out.errors:
        state = ""
        if st is not None:
            proc = st.procs[proxy]
            state = (f"\n{proxy} is {'still running' if proc.alive() else f'gone (status {proc.popen.returncode})'}"
                     f"; its log ends with:\n{proc.tail()}")
        raise BenchError(f"{proxy}: wrk saw {out.non_2xx} non-2xx/3xx responses and socket errors "
                         f"{out.socket_errors} in {out.requests} requests:\n{out.output}{state}")
    if out.requests == 0:
        raise BenchError(f"{proxy}: wrk completed no request:\n{out.output}")


# --- 1-3: wrk ---------------------------------------------------------------------------------------


def _wrk_rounds(opts: Options, res: BenchResult, path: str, expect: bytes | None, *, connections: int,
                target: float, latency: bool) -> None:
    """``expect`` None: the body is the file at ``path`` under the upstream's document root."""
    with stack(opts, res.name) as st:
        if expect is None:
            expect = (st.docroot / path.lstrip("/")).read_bytes()
        # A signed-in browser's requests to a private port: wsgate checks the session on each one.
        headers = (st.session_header,)
        res.details.append(f"requests to {SESSION_HOST}, a port private to its owner, carry the host cookie "
                           "of a signed-in session; wsgate checks it on every request (nginx checks nothing)")
        check_http(st, res, path, expect, host=SESSION_HOST, headers=headers)
        if https_request(st.ports["wsgate"], SESSION_HOST, path, ca=st.ca).status != 302:
            raise BenchError(f"wsgate: {SESSION_HOST} answered without a session: it is not checking them")
        urls = {p: f"https://127.0.0.1:{st.ports[p]}{path}" for p in PROXIES}
        for proxy in PROXIES:
            check_wrk(proxy, wrk.run(urls[proxy], SESSION_HOST, connections=connections, threads=2,
                                     duration=opts.warmup, headers=headers), st)
        if latency:
            p50 = res.metric("latency p50", "ms", "diff<=", target)
            p99 = res.metric("latency p99", "ms", "info")
            rps = res.metric("throughput", "req/s", "info")
        else:
            rps = res.metric("throughput", "req/s", "ratio>=", target)
        mbs = res.metric("body throughput", "MB/s", "info") if len(expect) >= 1024 else None
        cpu = res.metric("proxy CPU per request", "us", "info")
        size = len(expect)

        def one(proxy: str, r: int) -> None:
            meter = CpuMeter(st.root_pid(proxy))
            out = wrk.run(urls[proxy], SESSION_HOST, connections=connections, threads=2, duration=opts.duration,
                          latency=latency, headers=headers)
            used = meter.stop()
            check_wrk(proxy, out, st)
            st.check_alive()
            rps.rounds[proxy].append(out.rps)
            cpu.rounds[proxy].append(used / out.requests * 1e6)
            if mbs is not None:
                mbs.rounds[proxy].append(out.rps * size / 1e6)
            text = f"{out.rps:,.0f} req/s, {out.transfer_per_sec}/s"
            if latency:
                p50.rounds[proxy].append(out.latency_ms["50"])
                p99.rounds[proxy].append(out.latency_ms["99"])
                text += f", p50 {out.latency_ms['50']:.3f} ms, p99 {out.latency_ms['99']:.3f} ms"
            progress(f"round {r + 1}/{opts.rounds} {proxy:6}: {text}, proxy CPU {used:.2f}s")

        interleaved(opts.rounds, one)


def small_get(opts: Options, res: BenchResult) -> None:
    _wrk_rounds(opts, res, "/", SMALL_BODY, connections=64, target=0.6, latency=False)


def get_64k(opts: Options, res: BenchResult) -> None:
    res.details.append("the 64 KiB file is random bytes, compared byte for byte through each proxy before measuring")
    _wrk_rounds(opts, res, f"/files/{BIG_FILE}", None, connections=64, target=0.9, latency=False)


def latency(opts: Options, res: BenchResult) -> None:
    _wrk_rounds(opts, res, "/", SMALL_BODY, connections=4, target=0.05, latency=True)


# --- 4: WebSocket echo ------------------------------------------------------------------------------


def ws_echo(opts: Options, res: BenchResult) -> None:
    procs = max(1, opts.client_procs)
    per = max(1, opts.ws_conns // procs)
    res.details.append(f"{per * procs} WebSockets ({procs} client processes x {per}), 64-byte binary messages, "
                       "one in flight per connection; each connection's echo is checked before the run")
    with stack(opts, res.name, ws_echo=True) as st:
        rate = res.metric("echo round trips", "msg/s", "ratio>=", 0.9)
        cpu = res.metric("proxy CPU per round trip", "us", "info")

        def one(proxy: str, r: int) -> None:
            start_at = time.time() + 1.0
            argvs = [["echo", "--port", str(st.ports[proxy]), "--host", WS_HOST, "--conns", str(per),
                      "--duration", str(opts.client_duration), "--start-at", str(start_at), "--index", str(i)]
                     for i in range(procs)]
            meter = CpuMeter(st.root_pid(proxy))
            with Clients("bench.wsclient", argvs) as clients:
                results = clients.finish(timeout=opts.client_duration + 90)
            used = meter.stop()
            st.check_alive()
            errors = sum(int(x["errors"]) for x in results)
            if errors:
                first = next(x["first_error"] for x in results if x["errors"])
                raise BenchError(f"{proxy}: {errors} WebSocket errors, first: {first}")
            conns = sum(int(x["conns"]) for x in results)
            if conns != per * procs:
                raise BenchError(f"{proxy}: only {conns} of {per * procs} WebSockets opened")
            total = sum(x["round_trips"] / x["seconds"] for x in results)
            trips = sum(int(x["round_trips"]) for x in results)
            rate.rounds[proxy].append(total)
            # The meter also covers the connection set-up and warm-up: an upper bound.
            cpu.rounds[proxy].append(used / max(1, trips) * 1e6)
            client_cpu = sum(float(x["client_cpu"]) for x in results)
            progress(f"round {r + 1}/{opts.rounds} {proxy:6}: {total:,.0f} round trips/s, proxy CPU {used:.2f}s, "
                     f"client CPU {client_cpu:.2f}s in {opts.client_duration:g}s")

        interleaved(opts.rounds, one)


# --- 5-6: TLS handshakes ----------------------------------------------------------------------------


def _tls_rounds(opts: Options, res: BenchResult, *, resume: bool, workers: int, target: float) -> None:
    procs = max(1, opts.client_procs)
    threads = 4
    res.details.append(
        f"{procs} client processes x {threads} threads, each connection: connect, "
        f"{'resumed' if resume else 'full'} TLS handshake, GET / with Connection: close, 200 'hello' checked, close; "
        f"{workers} worker(s) each"
    )
    res.details.append(
        "the client (Python ssl on OpenSSL 3.0) needs about 1 ms of CPU per handshake, more than either proxy: on "
        "2 shared cores conn/s is partly client-bound and narrows the gap; 'proxy CPU per connection' is the "
        "server-side cost"
    )
    with stack(opts, res.name, workers=workers) as st:
        check_http(st, res, "/", SMALL_BODY)
        kind = "resumed" if resume else "full"
        rate = res.metric(f"{kind} handshakes", "conn/s", "ratio>=", target)
        frac = res.metric("resumed fraction", "%", "both>=" if resume else "info", 99.0 if resume else 0.0)
        cpu = res.metric("proxy CPU per connection", "us", "info")

        def one(proxy: str, r: int) -> None:
            argvs = [["--port", str(st.ports[proxy]), "--host", HTTP_HOST, "--threads", str(threads),
                      "--duration", str(opts.client_duration), *(["--resume"] if resume else [])]
                     for _ in range(procs)]
            meter = CpuMeter(st.root_pid(proxy))
            with Clients("bench.tlsclient", argvs) as clients:
                results = clients.finish(timeout=opts.client_duration + 60)
            used = meter.stop()
            st.check_alive()
            errors = sum(int(x["errors"]) for x in results)
            done = sum(int(x["done"]) for x in results)
            reused = sum(int(x["reused"]) for x in results)
            if errors:
                first = next(x["first_error"] for x in results if x["errors"])
                raise BenchError(f"{proxy}: {errors} failed connections (of {done + errors}), first: {first}")
            if not done:
                raise BenchError(f"{proxy}: no connection completed")
            if not resume and reused:
                raise BenchError(f"{proxy}: {reused} sessions were resumed in the full-handshake run")
            total = sum(x["done"] / x["seconds"] for x in results)
            rate.rounds[proxy].append(total)
            frac.rounds[proxy].append(100.0 * reused / done)
            cpu.rounds[proxy].append(used / done * 1e6)
            client_cpu = sum(float(x["client_cpu"]) for x in results)
            progress(f"round {r + 1}/{opts.rounds} {proxy:6}: {total:,.0f} conn/s, {reused}/{done} resumed, "
                     f"proxy CPU {used:.2f}s (per process: {meter.split()}), client CPU {client_cpu:.2f}s")

        interleaved(opts.rounds, one)


def tls_handshakes(opts: Options, res: BenchResult) -> None:
    _tls_rounds(opts, res, resume=False, workers=opts.workers, target=0.9)


def tls_resumed(opts: Options, res: BenchResult) -> None:
    _tls_rounds(opts, res, resume=True, workers=max(2, opts.workers), target=0.8)


# --- 7: idle WebSocket memory -----------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def idle_ws_memory(opts: Options, res: BenchResult) -> None:
    n = opts.idle_conns
    procs = max(1, min(opts.idle_procs, n))
    res.details.append(
        f"{n} idle WebSockets per proxy from {procs} client processes, one echo on each first; growth of the summed "
        f"PSS (and RSS) of all the proxy's processes, over a baseline taken after a warm-up of 50 WebSockets; "
        f"fresh proxies every round"
    )
    pss = res.metric("memory per idle WebSocket, PSS", "KiB", "ratio<=", 1.5)
    rss = res.metric("memory per idle WebSocket, RSS", "KiB", "info")
    rate = res.metric("WebSockets opened", "conn/s", "info")
    for r in range(opts.idle_rounds):
        with stack(opts, f"{res.name}-{r + 1}", ws_echo=True) as st:
            for proxy in PROXIES if r % 2 == 0 else PROXIES[::-1]:
                port = str(st.ports[proxy])
                with Clients("bench.wsclient", [["idle", "--port", port, "--host", WS_HOST, "--conns", "50",
                                                 "--index", "99"]]) as warm:
                    warm.wait_lines(1, timeout=60)
                    warm.signal(signal.SIGUSR1)
                    warm.finish(timeout=30)
                time.sleep(1.0)
                root = st.root_pid(proxy)
                before = footprint(root)
                argvs = [["idle", "--port", port, "--host", WS_HOST, "--conns", str(k), "--index", str(i),
                          "--hold", "600"] for i, k in enumerate(_split(n, procs))]
                with Clients("bench.wsclient", argvs) as clients:
                    ready = [ls[0] for ls in clients.wait_lines(1, timeout=max(120.0, n / 20))]
                    opened = sum(int(x["ready"]) for x in ready)
                    if opened != n:
                        first = next((x["first_error"] for x in ready if x["errors"]), "")
                        raise BenchError(f"{proxy}: only {opened} of {n} WebSockets opened; first error: {first}")
                    time.sleep(1.5)
                    st.check_alive()
                    after = footprint(root)
                    clients.signal(signal.SIGUSR1)
                    finals = clients.finish(timeout=60)
                lost = n - sum(int(x["still_open_at_end"]) for x in finals)
                if lost:
                    raise BenchError(f"{proxy}: {lost} of the {n} idle WebSockets were closed while idle")
                seconds = max(float(x["open_seconds"]) for x in ready)
                pss.rounds[proxy].append((after.pss_kib - before.pss_kib) / n)
                rss.rounds[proxy].append((after.rss_kib - before.rss_kib) / n)
                rate.rounds[proxy].append(n / seconds)
                progress(f"round {r + 1}/{opts.idle_rounds} {proxy:6}: PSS {before.pss_kib / 1024:.1f} -> "
                         f"{after.pss_kib / 1024:.1f} MiB ({pss.rounds[proxy][-1]:.1f} KiB/conn), RSS "
                         f"{before.rss_kib / 1024:.1f} -> {after.rss_kib / 1024:.1f} MiB, {after.processes} "
                         f"processes, opened in {seconds:.1f}s")


# --- 8: streaming -----------------------------------------------------------------------------------


@dataclass
class CurlResult:
    code: int
    size: int
    speed: float  # bytes/s
    body: bytes


def curl(st: Stack, proxy: str, host: str, path: str, *, upload: Path | None, timeout: float) -> CurlResult:
    port = st.ports[proxy]
    out = st.workdir / f"curl-{proxy}.out"
    fmt = "%{http_code} %{size_download} %{size_upload} %{speed_download} %{speed_upload}"
    argv = ["curl", "-sS", "--http1.1", "--cacert", str(st.ca), "--connect-to", f"{host}:{port}:127.0.0.1:{port}",
            "--max-time", str(int(timeout)), "-o", str(out) if upload else "/dev/null", "-w", fmt]
    if upload is not None:
        # No "Expect: 100-continue" pause: this measures the transfer.
        argv += ["-T", str(upload), "-H", "Expect:"]
    argv.append(f"https://{host}:{port}{path}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{proxy}: curl failed ({proc.returncode}): {proc.stderr.strip()}")
    code, down, up, speed_down, speed_up = proc.stdout.split()
    body = out.read_bytes() if upload else b""
    if upload:
        return CurlResult(int(code), int(up), float(speed_up), body)
    return CurlResult(int(code), int(down), float(speed_down), body)


def streaming(opts: Options, res: BenchResult) -> None:
    mib = opts.stream_mib
    size = mib << 20
    res.details.append(
        f"{mib} MiB download (sparse file from the upstream nginx) and {mib} MiB upload (PUT to a Python upstream "
        "that counts and discards) with curl; peak growth of the proxy's summed VmRSS sampled every 50 ms; "
        "nginx uses proxy_request_buffering off for the upload route so both stream"
    )
    with stack(opts, res.name, sink=True, big_file_mib=mib) as st:
        big = st.docroot / "files" / "big.bin"
        for proxy in PROXIES:
            resp = https_request(st.ports[proxy], SINK_HOST, "/upload", ca=st.ca, method="POST", body=b"x" * 100_000)
            if resp.status != 200 or resp.body != b"100000":
                raise BenchError(f"{proxy}: upload check answered {resp.status} {resp.body[:80]!r}")
        check_http(st, res, f"/files/{BIG_FILE}", (st.docroot / "files" / BIG_FILE).read_bytes())
        timeout = max(60.0, mib * 0.2)
        metrics = {
            ("download", "mem"): res.metric("download peak RSS growth", "MiB", "abs<", 50.0, summary="max"),
            ("upload", "mem"): res.metric("upload peak RSS growth", "MiB", "abs<", 50.0, summary="max"),
            ("download", "speed"): res.metric("download", "MB/s", "info"),
            ("upload", "speed"): res.metric("upload", "MB/s", "info"),
        }

        def one(proxy: str, r: int) -> None:
            for direction in ("download", "upload"):
                root = st.root_pid(proxy)
                with RssSampler(root) as sampler:
                    if direction == "download":
                        out = curl(st, proxy, HTTP_HOST, "/files/big.bin", upload=None, timeout=timeout)
                    else:
                        out = curl(st, proxy, SINK_HOST, "/upload", upload=big, timeout=timeout)
                st.check_alive()
                if out.code != 200 or out.size != size or (direction == "upload" and out.body != b"%d" % size):
                    raise BenchError(f"{proxy}: {direction} ended with status {out.code}, {out.size} of {size} "
                                     f"bytes sent/received, answer {out.body[:80]!r}")
                growth = sampler.growth_kib / 1024
                metrics[direction, "mem"].rounds[proxy].append(growth)
                metrics[direction, "speed"].rounds[proxy].append(out.speed / 1e6)
                progress(f"round {r + 1}/{opts.stream_rounds} {proxy:6} {direction:8}: {out.speed / 1e6:,.0f} MB/s, "
                         f"RSS {sampler.baseline / 1024:.1f} MiB + peak growth {growth:.1f} MiB "
                         f"({sampler.samples} samples)")

        interleaved(opts.stream_rounds, one)


BENCHMARKS: dict[str, tuple[str, Callable[[Options, BenchResult], None]]] = {
    "small_get": ("wrk keep-alive, 64 connections, 2 threads, 5-byte response", small_get),
    "get_64k": ("wrk keep-alive, 64 connections, 2 threads, 64 KiB file", get_64k),
    "latency": ("wrk keep-alive, 4 connections, 2 threads, --latency, 5-byte response", latency),
    "ws_echo": ("WebSocket echo round trips through the proxy", ws_echo),
    "tls_handshakes": ("new connections with full TLS handshakes (no resumption)", tls_handshakes),
    "tls_resumed": ("new connections resuming the TLS session (tickets), 2+ workers", tls_resumed),
    "idle_ws_memory": ("proxy memory per idle WebSocket", idle_ws_memory),
    "streaming": ("1 GiB download and upload through the proxy: wsgate's memory, MB/s of both", streaming),
}
