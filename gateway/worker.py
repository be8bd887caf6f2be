"""One gateway worker: the listener, its connections, the pools and the main-domain app.

Several workers serve one port, each on its own listening socket (forked by gateway.server);
each is a complete gateway with its own event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import socket
import ssl
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from auth.assertions import AssertionSigner
from auth.docstore import KindFollower, StoreUnavailable
from auth.policy import PUBLIC, parse_access
from auth.revocation import REVOCATION_KIND
from auth.teams import TeamDirectory
from certs.localca import ensure_local_ca
from certs.tls import CertificateError, TLSManager
from gateway.config import Config
from gateway.guard import Guard
from gateway.http1 import TrustedProxies
from gateway.logs import AccessLog, event
from gateway.metrics import Metrics
from gateway.prebuilds import Prebuilds
from gateway.proxy import ClientConnection, HotState, UpstreamPool
from gateway.rules import Rules
from gateway.wiring import build_auth, build_docs, config_teams
from launcher.base import Backend, LauncherError, Limits, NotRunning, Workspace
from launcher.namespaces import LauncherSettings, NamespaceLauncher
from launcher.remote import SameMachine
from routing.table import RouteTable, Upstream

log = logging.getLogger("wsgate.worker")

RECORD_KIND = "workspace"
# Ids of workspaces deleted by this process that are remembered (see Gateway._deleted_here).
_DELETED_KEPT = 10_000


def build_launcher(config: Config, *, warn: bool) -> Backend | None:
    """The embedded launcher, when it is on and can own its workspaces."""
    lc = config.launcher
    if not lc.enabled:
        return None
    if config.worker_count > 1:
        if warn:
            event(log, logging.WARNING, "the embedded launcher runs with workers = 1 only; it is off")
        return None
    if not config.auth.providers and not config.auth.dev_login:
        # Every workspace has an owner; with no sign-in there is nobody to own one.
        return None
    return NamespaceLauncher(
        LauncherSettings(
            state_dir=config.state_path.resolve(),
            base=lc.base,
            allowed_bases=lc.allowed_bases,
            hide=lc.hide,
            id_base=lc.id_base,
            id_count=lc.id_count,
            max_workspaces=lc.max_workspaces,
            limits=Limits(memory_bytes=lc.memory_mb << 20, pids=lc.pids, cpus=lc.cpus),
            stop_grace=lc.stop_grace,
            connect_timeout=config.proxy.connect_timeout,
            log_bytes=lc.log_bytes,
            keyring_file=Path(lc.keyring_file) if lc.keyring_file else None,
            stop_on_exit=lc.stop_on_exit,
        )
    )


def build_router(config: Config) -> RouteTable:
    table = RouteTable(config.domain)
    fill_router(table, config)
    return table


def fill_router(table: RouteTable, config: Config) -> None:
    for r in config.routes:
        table.set_host(r.host, Upstream.from_url(r.upstream), parse_access(r.access))
    for w in config.workspaces:
        table.set_workspace_port(
            w.id, w.port, Upstream.from_address(w.upstream), owner=w.owner, public=w.public, ide=w.ide
        )


class Gateway:
    """Everything one worker needs to serve; ClientConnection reads it on every request."""

    def __init__(self, config: Config, tls: TLSManager, *, index: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.tls = tls
        # Client connections do their TLS themselves on this context (gateway/proxy.py, `_decrypt`).
        self.tls_context: ssl.SSLContext = tls.context
        self.index = index
        self.router = build_router(config)
        self.auth = build_auth(config, warn=index == 0)
        port = "" if config.public_port == 443 else f":{config.public_port}"
        self.assertions = AssertionSigner.load_or_create(
            config.state_path / "keys" / "assertions", issuer=f"https://{config.domain}{port}/"
        )
        self.docs = build_docs(config)
        self.teams = TeamDirectory(self.docs, self.auth.policy, config_teams(config))
        self.prebuilds: Prebuilds | None = None
        self.rules = Rules(self)
        guard = self._guard(config)
        self.trusted = TrustedProxies(config.proxy.trusted_proxies)
        self.metrics = Metrics()
        self.access_log = AccessLog(config.log.access_log, config.log.format)
        self.connections: set[ClientConnection] = set()
        self.pool = UpstreamPool(
            self.loop,
            connect_timeout=config.proxy.connect_timeout,
            size=config.proxy.pool_size,
            idle_timeout=config.proxy.pool_idle_timeout,
            internal=self._internal_protocol,
        )
        self.hot = HotState(
            self.metrics,
            self.pool,
            guard=guard,
            router=self.router,
            access_log=self.access_log,
            request_prefix=os.urandom(4).hex().encode(),
        )
        self.hot.now = self.loop.time()
        self.launcher = build_launcher(config, warn=index == 0)
        # Workspaces launched by other gateway processes, from their shared records (id -> record).
        self.machine = socket.gethostname()
        self.remote: dict[str, Mapping[str, Any]] = {}
        # Workspaces deleted here: a record listing that began before the deletion still holds
        # theirs, and must not bring them back as another process's (ids are never reused).
        self._deleted_here: dict[str, None] = {}
        self.same_machine = SameMachine(self.loop, config.proxy.connect_timeout)
        self.pool.workspaces = self.connect_workspace
        self.docs.subscribe(self._records_changed)
        # Revocations: other replicas hear of this worker's, and its cached sessions are trusted
        # only while theirs can be heard (auth/revocation.py).
        self.auth.announce = self._announce_revocation
        if self.docs.replicated:
            self.auth.host_cache.live = self.auth.token_cache.live = lambda: self.docs.listening
        self.docs.follow(REVOCATION_KIND)
        # `wsgate tokens revoke` runs in a process of its own: it moves this generation.
        self.revocations = KindFollower(self.docs, REVOCATION_KIND, self._revocations_moved,
                                        "revocations not checked; cached tokens and sessions kept")
        self._records_generation = -1
        if self.launcher is not None:
            self.launcher.subscribe(self.workspace_changed)
        self._settings(config)
        self.server: asyncio.AbstractServer | None = None
        self.redirect_runner: web.AppRunner | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._next_cert_check = 0.0
        self._next_renewal_check = 0.0

    def _guard(self, config: Config) -> Guard:
        return Guard(
            self.auth,
            domain=config.domain,
            public_port=config.public_port,
            allowed_origins=config.auth.allowed_origins,
            signer=self.assertions,
        )

    def _settings(self, config: Config) -> None:
        """Copies the values the hot path reads on every request into its compiled state."""
        lim, prx, hot = config.limits, config.proxy, self.hot
        hot.max_connections = lim.max_connections
        hot.header_timeout = lim.header_timeout
        hot.keepalive_timeout = lim.keepalive_timeout
        hot.max_header_bytes = lim.max_header_bytes
        hot.max_url_length = lim.max_url_length
        hot.max_headers = lim.max_headers
        hot.max_body_bytes = lim.max_body_bytes
        hot.idle_timeout = prx.idle_timeout
        hot.response_timeout = prx.response_timeout

    @property
    def now(self) -> float:
        """The sweeper's coarse clock (loop time)."""
        return self.hot.now

    @property
    def draining(self) -> bool:
        return self.hot.draining

    # --- life cycle ----------------------------------------------------------------
    async def start(self, sock: socket.socket, redirect_sock: socket.socket | None = None) -> None:
        from gateway.app import build_app, build_redirect_app

        await self.docs.open()
        await self.teams.load()
        self.teams.start()
        await self.rules.load()
        self.rules.start()
        self.revocations.generation = await self.docs.generation(REVOCATION_KIND)
        self.revocations.start()
        if self.launcher is not None:
            try:
                await self.launcher.open()
            except (LauncherError, OSError) as e:
                # The gateway still serves everything else; the API says the launcher is off.
                event(log, logging.ERROR, "the embedded launcher cannot run; it is off", reason=str(e))
                self.launcher = None
            else:
                for w in self.launcher.workspaces():
                    self.workspace_changed(w)
        await self.load_records()
        self._runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.prebuilds is not None:
            await self.prebuilds.open()
        self.server = await self.loop.create_server(
            functools.partial(ClientConnection, self),  # called in C for each new connection
            sock=sock,
            backlog=self.config.listen.backlog,
        )
        if redirect_sock is not None:
            self.redirect_runner = web.AppRunner(build_redirect_app(self), access_log=None, handle_signals=False)
            await self.redirect_runner.setup()
            await web.SockSite(self.redirect_runner, redirect_sock).start()
        self._sweeper = asyncio.create_task(self._sweep_loop())

    def _internal_protocol(self) -> Any:
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_loop(self) -> None:
        """Coarse clock, timeouts, idle pool connections, access-log batches, certificate renewals."""
        lim = self.config.limits
        tick = max(0.05, min(0.5, lim.header_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.hot.now = self.loop.time()
            expired = [c for c in self.connections if c.deadline and c.deadline < now]
            for conn in expired:
                try:
                    conn.expire(now)
                except Exception:  # one broken connection must not stop the sweeper
                    log.exception("timeout handling failed")
            self.pool.sweep(now)
            self.access_log.flush()
            if now >= self._next_renewal_check:
                self._next_renewal_check = now + 3600
                await self.renew_local_leaf()
            interval = self.config.tls.reload_interval
            if interval and now >= self._next_cert_check:
                self._next_cert_check = now + interval
                await self.reload_certificates(only_if_changed=True)

    async def renew_local_leaf(self) -> None:
        """Re-issues the local CA's leaf when it nears expiry (worker 0 only; the others see the new files)."""
        if self.config.tls.certificates or self.index != 0:
            return
        if self.tls.not_after() - dt.datetime.now(dt.UTC) > dt.timedelta(days=30):
            return
        try:
            await asyncio.to_thread(ensure_local_ca, self.config.state_path, self.config.domain)
        except CertificateError as e:
            event(log, logging.ERROR, "local CA leaf renewal failed", error=str(e))
            return
        event(log, logging.INFO, "local CA leaf certificate renewed")
        await self.reload_certificates(only_if_changed=True)

    async def reload_certificates(self, *, only_if_changed: bool) -> None:
        try:
            changed = await asyncio.to_thread(self.tls.files_changed)
            if only_if_changed and not changed:
                return
            await asyncio.to_thread(self.tls.reload)
        except CertificateError as e:
            msg = "certificate reload failed; still serving the previous certificates"
            event(log, logging.ERROR, msg, error=str(e))
        else:
            event(log, logging.INFO, "certificates reloaded", certificates=self.tls.describe())

    def apply_config(self, config: Config) -> None:
        """SIGHUP: routes, limits, timeouts and logging change in place; listeners stay."""
        if (config.listen, config.domain, config.state_dir, config.workers) != (
            self.config.listen,
            self.config.domain,
            self.config.state_dir,
            self.config.workers,
        ):
            event(log, logging.WARNING, "listen, domain, state_dir and workers change only on restart")
        self.config = config
        self._settings(config)
        table = self.router
        table.clear()
        fill_router(table, config)
        if self.launcher is not None:
            for w in self.launcher.workspaces():
                self.workspace_changed(w)
        self.trusted = TrustedProxies(config.proxy.trusted_proxies)
        # Admins, teams and allowed origins change in place; providers and stores only on restart.
        self.auth.policy.admins = frozenset(config.auth.admins)
        self.teams.config_teams = config_teams(config)
        self.spawn(self.teams.load())
        self.hot.guard = self._guard(config)
        self.access_log.enabled = config.log.access_log
        self.pool.connect_timeout = config.proxy.connect_timeout
        self.pool.size = config.proxy.pool_size
        self.pool.idle_timeout = config.proxy.pool_idle_timeout

    async def drain(self) -> None:
        """SIGTERM: stop accepting, let requests finish within the grace period, close WebSockets with 1001."""
        if self.draining:
            return
        self.hot.draining = True
        event(log, logging.INFO, "draining", connections=len(self.connections), worker=self.index)
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + self.config.limits.shutdown_grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.close()

    async def connect_workspace(self, workspace_id: str, port: int) -> socket.socket:
        """A connection into a workspace: ours through our launcher, a neighbour's through its control socket."""
        if self.launcher is not None and self.launcher.get(workspace_id) is not None:
            return await self.launcher.connect(workspace_id, port)
        record = self.remote.get(workspace_id)
        if record is None or record.get("state") != "running":
            raise NotRunning("the workspace is not running")
        if record.get("machine") != self.machine:
            raise NotRunning(f"the workspace runs on {record.get('machine')}, which this replica cannot reach")
        return await self.same_machine.connect(str(record.get("run_dir", "")), port)

    def _records_changed(self, kind: str, _id: str) -> None:
        if kind == RECORD_KIND:
            self.spawn(self.load_records())
        elif kind == REVOCATION_KIND:
            self.auth.epoch.advance()

    async def _revocations_moved(self) -> None:
        generation = await self.docs.generation(REVOCATION_KIND)
        self.auth.epoch.advance()
        self.revocations.generation = generation

    async def _announce_revocation(self) -> None:
        try:
            await self.docs.announce(REVOCATION_KIND)
        except StoreUnavailable as e:
            # Nothing cached here survives the outage: the caches stop trusting themselves
            # until the channel is back, and the reconnect says "reload everything".
            event(log, logging.WARNING, "revocation not announced to other replicas", error=str(e))

    async def load_records(self) -> None:
        """Routes for the workspaces other gateway processes run (their owner-only rule applies here too)."""
        try:
            generation = await self.docs.generation(RECORD_KIND)
            if generation == self._records_generation:
                return
            docs = await self.docs.list(RECORD_KIND)
        except StoreUnavailable as e:
            event(log, logging.WARNING, "workspace records not reloaded", error=str(e))
            return
        self._records_generation = generation
        ours = {w.id for w in self.launcher.workspaces()} if self.launcher is not None else set()
        deleted = self._deleted_here
        remote = {d.id: d.body for d in docs if d.id not in ours and d.id not in deleted}
        for gone in set(self.remote) - set(remote):
            self.router.remove_workspace(gone)
            self.close_public(gone, None)
        for wid, body in remote.items():
            public = frozenset(int(p) for p in body.get("public_ports", ()))
            ide = body.get("ide_port")
            self.router.set_launched_workspace(
                wid, owner=str(body.get("owner", "")), public_ports=public, ide_port=int(ide) if ide else None
            )
            self.close_public(wid, public)
        self.remote = remote

    async def _publish_record(self, w: Workspace) -> None:
        """Writes where a workspace runs to the shared store, so that every replica can route to it."""
        try:
            if w.state == "deleted":
                await self.docs.delete(RECORD_KIND, w.id)
                return
            assert self.launcher is not None
            await self.docs.put(RECORD_KIND, w.id, {
                "owner": w.owner,
                "machine": self.machine,
                "run_dir": self.launcher.run_dir(w.id),
                "state": w.state,
                "public_ports": sorted(p.number for p in w.ports if p.public),
                "ide_port": w.ide_port,
            })
        except StoreUnavailable as e:
            event(log, logging.WARNING, "workspace record not shared", id=w.id, error=str(e))

    def workspace_changed(self, w: Workspace) -> None:
        """Keeps the route table in step with the launcher, and enforces a port made private."""
        if w.kind == "workspace":
            self.spawn(self._publish_record(w))
        if w.state == "deleted":
            self._deleted_here[w.id] = None
            if len(self._deleted_here) > _DELETED_KEPT:
                del self._deleted_here[next(iter(self._deleted_here))]
            self.router.remove_workspace(w.id)
            self.close_public(w.id, None)
            return
        public = frozenset(p.number for p in w.ports if p.public)
        self.router.set_launched_workspace(w.id, owner=w.owner, public_ports=public, ide_port=w.ide_port)
        self.close_public(w.id, public)

    def rules_changed(self) -> None:
        """Closes the WebSockets that the new rules no longer admit (deleted, narrowed, WebSockets off)."""
        for conn in list(self.connections):
            r = conn.open_route
            if r is None or r.rule is None or conn.tunnel is None or conn.transport is None:
                continue
            now = self.router.match_rule(r.host, conn.open_path)
            rule = now.rule if now is not None else None
            if (
                rule is None
                or not rule.websocket
                or (rule.access_level != r.access and not self.auth.policy.allows(rule.access_level, conn.principal))
            ):
                conn.transport.abort()

    def close_public(self, workspace_id: str, still_public: frozenset[int] | None) -> None:
        """Closes connections admitted to a workspace port as public that no longer is."""
        for conn in list(self.connections):
            r = conn.open_route
            if (
                r is not None
                and r.workspace_id == workspace_id
                and r.access.level == PUBLIC
                and (still_public is None or r.port not in still_public)
                and conn.transport is not None
            ):
                conn.transport.abort()

    async def close(self) -> None:
        if self.launcher is not None:
            await self.launcher.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.close_all()
        if self.redirect_runner is not None:
            await self.redirect_runner.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
        self.access_log.flush()
        await self.teams.stop()
        self.same_machine.close()
        await self.rules.stop()
        await self.revocations.stop()
        await self.docs.close()
        await self.auth.close()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()
