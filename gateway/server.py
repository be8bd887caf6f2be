"""Starting and stopping the gateway: sockets, TLS, workers, signals, metrics.

The TLS context is built and the sockets are bound before workers fork, so
every worker shares one session-ticket key (resumption works whichever worker
a client lands on). Each worker gets its own listening socket on the port
(SO_REUSEPORT), so that the kernel spreads new connections evenly; with one
shared socket, the worker that wakes first takes a whole burst of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from auth.revocation import share_between_workers
from certs.tls import CertPair, TLSManager, local_ca_manager
from gateway import hot_path_compiled
from gateway.config import Config, ConfigError, load_config, with_dev_login
from gateway.logs import event, setup_logging
from gateway.metrics import merge, render
from gateway.wiring import prepare_auth_state
from gateway.worker import Gateway

log = logging.getLogger("wsgate.server")


def build_tls(config: Config) -> TLSManager:
    if config.tls.certificates:
        base = Path(config.source).parent if config.source.endswith(".toml") else Path.cwd()
        pairs = [CertPair(base / c.cert, base / c.key) for c in config.tls.certificates]
        return TLSManager(pairs, session_tickets=config.tls.session_tickets)
    return local_ca_manager(config.state_path, config.domain)


def check_coverage(config: Config, tls: TLSManager) -> None:
    """A routed host that no certificate covers would fail every browser's handshake."""
    for i, route in enumerate(config.routes):
        if not tls.covers(route.host.lower().rstrip(".")):
            raise ConfigError(
                f"{config.source}: key 'routes[{i}].host': no certificate covers {route.host!r}; "
                "add one under [[tls.certificates]] or use a host under the gateway's domain"
            )


def bind(address: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.create_server((address, port), family=family, backlog=backlog, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


def bind_workers(address: str, port: int, backlog: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on one port.

    The supervisor keeps them open, so a worker that dies and is replaced leaves the
    connections queued on its socket for its successor. Linux admits to the port only
    sockets of the same user, so no other account can bind beside them and take connections.
    """
    if workers == 1:
        return [bind(address, port, backlog)]
    first = bind(address, port, backlog, reuse_port=True)
    port = first.getsockname()[1]  # port 0 asks for any: the rest join the one the first got
    socks = [first]
    try:
        socks.extend(bind(address, port, backlog, reuse_port=True) for _ in range(workers - 1))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _metrics_app(snapshot: Any) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=render(snapshot()), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def _start_metrics(config: Config, snapshot: Any) -> web.AppRunner | None:
    if not config.metrics.port:
        return None
    runner = web.AppRunner(_metrics_app(snapshot), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.metrics.address, config.metrics.port).start()
    return runner


def announce(config: Config, sock: socket.socket, tls: TLSManager) -> None:
    port = config.listen.public_port or sock.getsockname()[1]
    authority = config.domain if port == 443 else f"{config.domain}:{port}"
    fields: dict[str, Any] = {
        "url": f"https://{authority}/",
        "workspaces": f"https://<port>-<workspace>.ws.{authority}/",
        "listen": f"{config.listen.address}:{sock.getsockname()[1]}",
        "workers": config.worker_count,
        "hot_path": "compiled" if hot_path_compiled() else "interpreted",
        "config": config.source,
        "certificates": tls.describe(),
    }
    if not config.tls.certificates:
        fields["ca_certificate"] = str((config.state_path / "ca" / "ca.pem").resolve())
    event(log, logging.INFO, "wsgate is serving", **fields)
    # The same for a person at a terminal.
    lines = [f"wsgate is serving {fields['url']}", f"  workspaces: {fields['workspaces']}"]
    if "ca_certificate" in fields:
        lines.append(f"  trust this CA in your browser: {fields['ca_certificate']}  (or run: wsgate certs ca)")
    print("\n".join(lines), file=sys.stderr, flush=True)


async def run_worker(
    config: Config,
    tls: TLSManager,
    sock: socket.socket,
    redirect_sock: socket.socket | None,
    *,
    index: int = 0,
    report_fd: int | None = None,
    serve_metrics: bool = True,
) -> None:
    """Serves until SIGTERM/SIGINT; SIGHUP re-reads the config file and the certificates."""
    gw = Gateway(config, tls, index=index)
    await gw.start(sock, redirect_sock)
    loop = asyncio.get_running_loop()
    metrics_runner = await _start_metrics(config, gw.metrics.snapshot) if serve_metrics else None

    def reload() -> None:
        async def go() -> None:
            if config.source != "<embedded defaults>":
                try:
                    new = load_config(config.source)
                    if config.auth.dev_login and not new.auth.dev_login:
                        # Providers change only on restart; the dev sign-in stays as started (--dev-login).
                        new = with_dev_login(new)
                    gw.apply_config(new)
                except ConfigError as e:
                    event(log, logging.ERROR, "config reload refused; keeping the running config", error=str(e))
                    return
            await gw.renew_local_leaf()
            await gw.reload_certificates(only_if_changed=False)
            event(log, logging.INFO, "configuration reloaded", worker=index)

        gw.spawn(go())

    loop.add_signal_handler(signal.SIGTERM, lambda: gw.spawn(gw.drain()))
    loop.add_signal_handler(signal.SIGINT, lambda: gw.spawn(gw.drain()))
    loop.add_signal_handler(signal.SIGHUP, reload)
    reporter = None
    if report_fd is not None:
        reporter = asyncio.create_task(_report(gw, report_fd))
    await gw.wait_closed()
    if reporter is not None:
        reporter.cancel()
    if metrics_runner is not None:
        await metrics_runner.cleanup()


async def _report(gw: Gateway, fd: int) -> None:
    """Sends this worker's metrics to the supervisor once a second."""
    os.set_blocking(fd, False)
    while True:
        await asyncio.sleep(1.0)
        line = (json.dumps(gw.metrics.snapshot()) + "\n").encode()
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, line)


def serve(config: Config) -> int:
    setup_logging(config.log.level, config.log.format)
    tls = build_tls(config)
    check_coverage(config, tls)
    prepare_auth_state(config)
    share_between_workers()  # before any worker forks
    socks = bind_workers(config.listen.address, config.listen.port, config.listen.backlog, config.worker_count)
    redirect_sock = (
        bind(config.listen.address, config.listen.http_redirect_port, config.listen.backlog)
        if config.listen.http_redirect_port
        else None
    )
    announce(config, socks[0], tls)
    if config.worker_count == 1:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_worker(config, tls, socks[0], redirect_sock))
        return 0
    return Supervisor(config, tls, socks, redirect_sock).run()


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive its supervisor (killed with SIGKILL, say) and keep the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(0)


class Supervisor:
    """Forks the workers, restarts one that dies, relays signals, serves summed metrics."""

    def __init__(
        self, config: Config, tls: TLSManager, socks: list[socket.socket], redirect_sock: socket.socket | None
    ) -> None:
        self.config = config
        self.tls = tls
        self.socks = socks  # worker i listens on socks[i]
        self.redirect_sock = redirect_sock
        self.workers: dict[int, int] = {}  # pid -> index
        self.snapshots: dict[int, dict[str, Any]] = {}
        # The loop keeps only weak references to tasks: an unreferenced collector can be
        # garbage-collected mid-read, and the supervisor would stop hearing from that worker.
        self.collectors: set[asyncio.Task[None]] = set()
        self.stopping = False

    def _fork(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 0
            try:
                _exit_with_parent(supervisor)
                # Leave the supervisor's loop behind: the worker starts a fresh one.
                asyncio.events._set_running_loop(None)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(
                        run_worker(self.config, self.tls, self.socks[index], self.redirect_sock, index=index,
                                   report_fd=write_fd, serve_metrics=False)
                    )
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        self.workers[pid] = index
        task = asyncio.get_running_loop().create_task(self._collect(read_fd, index))
        self.collectors.add(task)
        task.add_done_callback(self.collectors.discard)

    async def _collect(self, fd: int, index: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):  # a torn line: the next report replaces it
                    self.snapshots[index] = json.loads(line)
        finally:
            transport.close()

    def _snapshot(self) -> dict[str, Any]:
        return merge(list(self.snapshots.values()))

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.config.worker_count):
            self._fork(i)
        metrics_runner = await _start_metrics(self.config, self._snapshot)
        done = asyncio.Event()

        def relay(sig: int) -> None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            for pid in list(self.workers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        def reap() -> None:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                index = self.workers.pop(pid, None)
                if index is None:
                    continue
                self.snapshots.pop(index, None)
                if self.stopping:
                    continue
                event(log, logging.ERROR, "worker exited; starting a new one", worker=index,
                      status=os.waitstatus_to_exitcode(status))
                self._fork(index)
            if self.stopping and not self.workers:
                done.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, relay, sig)
        # uvloop keeps SIGCHLD for itself, so dead workers are found by polling.
        while not done.is_set():
            reap()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)
        if metrics_runner is not None:
            await metrics_runner.cleanup()

    def run(self) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())
        return 0
