"""The embedded launcher: each workspace a single-use set of Linux namespaces on this machine.

Layout under the state directory (`<state>/workspaces/<id>/`, mode 0711):

- ``record.json``: what the workspace is (owner, command, ports, state), with
  its environment sealed by the launcher keyring (AES-256-GCM, key id inside);
- ``backup.wsb``: the sealed tar of ``/workspace`` made when it last stopped;
- ``output.log.sealed``: the bounded output of the last run, sealed like the
  backup when it stops (while it runs, ``run/output.log`` + ``.1``);
- ``run/``: exists while it runs: the writable layer (``upper``), the overlay's
  ``work``, the mount points, the init's control socket, ``pid`` and ``exit``.

All mounts live in the workspace's own mount namespaces (the shim's and the
container's), so they vanish with its processes: a crash leaves none behind.
The shim (``init.c``) is not the gateway's child for long: it detaches, so a
gateway restart adopts running workspaces instead of losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from certs.envelope import Keyring
from certs.errors import EnvelopeError

from . import backup
from .base import (
    FAILED,
    LIVE,
    PUBLIC,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    Backend,
    LauncherError,
    Limits,
    Listener,
    NotRunning,
    OutputFile,
    PortSpec,
    StartRequest,
    Workspace,
    check_request,
    is_id,
    new_id,
)
from .build import init_binary
from .cgroups import Cgroups
from .control import Control
from .outputs import digest_outputs

log = logging.getLogger("wsgate.launcher")

_TAIL_LINES = 20
# How much of a followed log is remembered to find its place in the sealed log.
_SEEN_BYTES = 4096
_MIN_OVERLAP = 16
_TAIL_BYTES = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class LauncherSettings:
    state_dir: Path
    base: str = "/"
    # Subordinate host ids when the gateway runs as root: workspace i maps its
    # root to id_base + i * id_count, for id_count ids.
    id_base: int = 1_000_000
    id_count: int = 65536
    max_workspaces: int = 256
    limits: Limits = dataclasses.field(default_factory=Limits)
    stop_grace: float = 10.0
    connect_timeout: float = 5.0
    log_bytes: int = 1 << 20
    hide: tuple[str, ...] = ()
    keyring_file: Path | None = None
    stop_on_exit: bool = False
    allowed_bases: tuple[str, ...] = ()


@dataclasses.dataclass(slots=True)
class _Live:
    record: Workspace
    slot: int = -1
    env_sealed: str = ""
    limits: Limits = dataclasses.field(default_factory=Limits)
    init_pid: int = 0
    init_start: int = 0
    shim_pid: int = 0
    shim: subprocess.Popen[bytes] | None = None
    control: Control | None = None
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    finalized: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    save_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    stop_requested: bool = False
    exit_task: asyncio.Task[None] | None = None


class NamespaceLauncher(Backend):
    def __init__(self, settings: LauncherSettings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "workspaces"
        self.privileged = os.geteuid() == 0
        self.cgroups: Cgroups | None = None
        self.keyring: Keyring | None = None
        self.init_path: Path | None = None
        self._live: dict[str, _Live] = {}
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle of the launcher ------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._prepare)
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and is_id(entry.name) and (entry / "record.json").is_file():
                try:
                    await self._adopt(entry.name)
                except (OSError, ValueError, KeyError) as e:
                    log.error("event=workspace_unreadable id=%s error=%r", entry.name, str(e))

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.init_path = init_binary(self.settings.state_dir / "bin")
        self.keyring = Keyring.load_or_create(
            self.settings.keyring_file or self.settings.state_dir / "keys" / "launcher.keyring"
        )
        self.cgroups = Cgroups()
        if not self.privileged:
            log.warning(
                "event=launcher_unprivileged detail=%r",
                "the gateway does not run as root: every workspace's root maps to the gateway's own uid "
                "(weaker isolation: workspaces are not separated from each other by host uid)",
            )
        if not self.cgroups.available:
            log.warning(
                "event=cgroups_unavailable reason=%r detail=%r",
                self.cgroups.reason,
                "workspaces run without memory, pids and CPU limits",
            )

    async def close(self) -> None:
        if self.settings.stop_on_exit:
            await asyncio.gather(
                *(self.stop(i) for i, w in list(self._live.items()) if w.record.state in LIVE), return_exceptions=True
            )
        for live in self._live.values():
            if live.control is not None:
                live.control.detach()
            if live.exit_task is not None:
                live.exit_task.cancel()

    # --- queries --------------------------------------------------------------
    def get(self, workspace_id: str) -> Workspace | None:
        live = self._live.get(workspace_id)
        return live.record if live else None

    def workspaces(self) -> list[Workspace]:
        return sorted((w.record for w in self._live.values()), key=lambda w: w.created)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _publish(self, live: _Live) -> None:
        for listener in self._listeners:
            try:
                listener(live.record)
            except Exception:
                log.exception("workspace listener failed")

    def _dir(self, workspace_id: str) -> Path:
        return self.root / workspace_id

    # --- start ----------------------------------------------------------------
    async def start(self, req: StartRequest, *, workspace_id: str | None = None) -> Workspace:
        """Start a new workspace, or (with workspace_id) start a stopped one again from its backup."""
        if workspace_id is None:
            check_request(req)
            base = req.base or self.settings.base
            self._check_base(base)
            assert self.keyring is not None
            wid = new_id()
            env = "\x00".join(f"{k}={v}" for k, v in req.env.items()).encode()
            record = Workspace(
                id=wid,
                owner=req.owner,
                command=req.command,
                base=base,
                state=STARTING,
                ports=tuple(req.ports),
                ide_port=req.ide_port,
                created=time.time(),
                kind=req.kind,
                labels=dict(req.labels),
                outputs_dir=req.outputs_dir,
                log_bytes=req.log_bytes,
            )
            live = _Live(
                record,
                env_sealed=self.keyring.seal(env, aad=wid.encode()).hex(),
                limits=req.limits or self.settings.limits,
            )
            self._live[wid] = live
        else:
            found = self._live.get(workspace_id)
            if found is None:
                raise LauncherError("no such workspace")
            live = found
        async with live.lock:
            if workspace_id is not None:
                if live.record.state in LIVE:
                    return live.record
                live.record = dataclasses.replace(
                    live.record, state=STARTING, exit_code=None, error="", finished=None, started=None, outputs=()
                )
            if sum(1 for w in self._live.values() if w.record.state in LIVE) > self.settings.max_workspaces:
                live.record = dataclasses.replace(live.record, state=FAILED, error="too many workspaces are running")
                await self._save(live)
                raise LauncherError(f"at most {self.settings.max_workspaces} workspaces can run at once")
            live.slot = self._free_slot()
            live.ended = asyncio.Event()
            live.finalized = asyncio.Event()
            live.stop_requested = False
            await self._save(live)
            self._publish(live)
            try:
                await self._launch(live)
            except (LauncherError, OSError) as e:
                log.error("event=workspace_start_failed id=%s error=%r", live.record.id, str(e))
                with contextlib.suppress(LauncherError, OSError):
                    await asyncio.to_thread(self._kill_leftovers, live)
                    await asyncio.to_thread(self._cleanup_run, live.record.id)
                if self.cgroups is not None:
                    await asyncio.to_thread(self.cgroups.remove, live.record.id)
                live.record = dataclasses.replace(live.record, state=FAILED, error=str(e), finished=time.time())
                live.finalized.set()
                await self._save(live)
                self._publish(live)
                if isinstance(e, LauncherError):
                    raise
                raise LauncherError(f"the workspace could not be started: {e}") from e
            live.record = dataclasses.replace(live.record, state=RUNNING, started=time.time())
            await self._save(live)
        self._publish(live)
        log.info("event=workspace_started id=%s owner=%s pid=%d", live.record.id, live.record.owner, live.init_pid)
        return live.record

    def _check_base(self, base: str) -> None:
        if base != self.settings.base and base not in self.settings.allowed_bases:
            raise LauncherError(f"base: {base!r} is not one of the bases this gateway allows")
        if not os.path.isabs(base) or not os.path.isdir(base):
            raise LauncherError(f"base: {base!r} is not a directory on the gateway's host")

    def _free_slot(self) -> int:
        if not self.privileged:
            return 0
        taken = {w.slot for w in self._live.values() if w.record.state in LIVE and w.slot >= 0}
        for slot in range(self.settings.max_workspaces):
            if slot not in taken:
                return slot
        raise LauncherError(f"at most {self.settings.max_workspaces} workspaces can run at once")

    def _ids(self, live: _Live) -> tuple[int, int]:
        """(first host id, count) of the workspace's user namespace; (0, 0) when unprivileged."""
        if not self.privileged:
            return 0, 0
        return self.settings.id_base + live.slot * self.settings.id_count, self.settings.id_count

    async def _launch(self, live: _Live) -> None:
        assert self.keyring is not None and self.cgroups is not None and self.init_path is not None
        wid = live.record.id
        first, count = self._ids(live)
        procs = await asyncio.to_thread(self._prepare_run, live)
        run = self._dir(wid) / "run"
        args = [
            str(self.init_path),
            "-d",
            str(run),
            "-n",
            wid,
            "-b",
            live.record.base,
            "-l",
            str((live.record.log_bytes or self.settings.log_bytes) // 2),
        ]
        if count:
            args += ["-u", str(first), "-g", str(first), "-k", str(count)]
        for p in procs:
            args += ["-c", p]
        for hidden in self._hidden(live.record.base):
            args += ["-m", hidden]
        args += ["--", "/bin/sh", "-c", live.record.command]
        try:
            env = self.keyring.open(bytes.fromhex(live.env_sealed), aad=wid.encode())
        except (EnvelopeError, ValueError) as e:
            raise LauncherError(f"the workspace's environment cannot be decrypted: {e}") from None
        line, shim = await asyncio.to_thread(self._spawn, args, env, run)
        if not line.startswith("ok "):
            raise LauncherError(line.removeprefix("error ").strip() or "the workspace did not start")
        live.shim = shim
        live.shim_pid = shim.pid
        live.init_pid = int(line.split()[1])
        live.init_start = _start_time(live.init_pid)
        await self._attach(live)

    @staticmethod
    def _spawn(args: list[str], env: bytes, run: Path) -> tuple[str, subprocess.Popen[bytes]]:
        with open(run / "shim.log", "ab") as err:
            shim = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                close_fds=True,
                start_new_session=True,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        assert shim.stdin is not None and shim.stdout is not None
        try:
            shim.stdin.write(env)
            shim.stdin.close()
        except BrokenPipeError:
            pass
        line = shim.stdout.readline().decode(errors="replace")
        shim.stdout.close()
        if not line.startswith("ok "):
            shim.wait()
        return line, shim

    def _hidden(self, base: str) -> list[str]:
        """Paths of the base that the container must not see: the gateway's state, always."""
        out = [str(self.settings.state_dir.resolve())]
        if base == "/":
            out += list(self.settings.hide)
        else:
            # A state directory inside a custom base would be seen relative to it.
            with contextlib.suppress(ValueError):
                out.append("/" + str(self.settings.state_dir.resolve().relative_to(Path(base).resolve())))
        return out

    def _prepare_run(self, live: _Live) -> list[str]:
        assert self.keyring is not None and self.cgroups is not None
        wid = live.record.id
        wdir = self._dir(wid)
        run = wdir / "run"
        self._cleanup_run(wid)
        wdir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(wdir, 0o711)
        run.mkdir(mode=0o711)
        first, count = self._ids(live)
        for name in ("upper", "work", "lower", "root"):
            (run / name).mkdir(mode=0o755)
        if count:
            for name in ("upper", "work"):
                os.chown(run / name, first, first)
        target = run / "upper" / "workspace"
        saved = wdir / "backup.wsb"
        if saved.exists():
            backup.restore(self.keyring, saved, target, wid, first, count)
        else:
            target.mkdir(mode=0o755)
            if count:
                os.chown(target, first, first)
        # A previous run's output stays readable until this one writes its own.
        previous = self._sealed_log(wid)
        if previous:
            fd = os.open(run / "output.log.1", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(previous)
        try:
            return self.cgroups.create(wid, live.limits)
        except OSError as e:
            raise LauncherError(f"cannot set the workspace's resource limits: {e}") from None

    async def _attach(self, live: _Live) -> None:
        assert self._loop is not None
        wid = live.record.id

        def closed() -> None:
            live.ended.set()
            if live.exit_task is None or live.exit_task.done():
                live.exit_task = asyncio.get_running_loop().create_task(self._finish(wid))

        # Through a directory descriptor: the state path may be longer than a unix socket path allows.
        fd = os.open(self._dir(wid) / "run", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            live.control = Control(self._loop, f"/proc/self/fd/{fd}/ctl.sock", closed)
        except OSError:
            # The init has already ended (a command that exits at once): finish as for any exit.
            live.control = None
            closed()
        finally:
            os.close(fd)

    # --- the end of a run -----------------------------------------------------------
    async def _finish(self, workspace_id: str) -> None:
        """The workspace's init is gone: keep its data and output, clean up the rest."""
        live = self._live.get(workspace_id)
        if live is None:
            return
        code = await self._exit_code(live)
        error = ""
        outputs: tuple[OutputFile, ...] = ()
        try:
            outputs = await asyncio.to_thread(self._save_run, live)
        except LauncherError as e:
            error = str(e)
            log.error("event=backup_failed id=%s error=%r", workspace_id, error)
        if code is None:
            state, error = FAILED, error or "the workspace ended without an exit status"
        elif code == 0 or live.stop_requested:
            state = STOPPED
        else:
            state = FAILED
            error = error or f"exited with code {code}"
        ended = dataclasses.replace(
            live.record, state=state, exit_code=code, error=error, finished=time.time(), outputs=outputs
        )
        live.control = None
        await self._save(live, ended)
        live.finalized.set()
        self._publish(live)
        log.info("event=workspace_ended id=%s state=%s exit_code=%s", workspace_id, state, code)

    async def _exit_code(self, live: _Live) -> int | None:
        path = self._dir(live.record.id) / "run" / "exit"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shim_gone = (live.shim.poll() is not None) if live.shim is not None else not _alive(live.shim_pid)
            if shim_gone and not path.exists():
                break
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                await asyncio.sleep(0.01)
        if live.shim is not None:
            live.shim.poll()
        return None

    def _save_run(self, live: _Live) -> tuple[OutputFile, ...]:
        """Backs up /workspace, seals the output, removes the run directory and the cgroups.

        Returns the digests of the files left in the outputs directory, if the run has one.
        """
        assert self.keyring is not None and self.cgroups is not None
        wid = live.record.id
        wdir = self._dir(wid)
        run = wdir / "run"
        self._kill_leftovers(live)
        first, _count = self._ids(live)
        error: LauncherError | None = None
        source = run / "upper" / "workspace"
        outputs: tuple[OutputFile, ...] = ()
        if live.record.outputs_dir and source.is_dir() and not source.is_symlink():
            try:
                outputs = digest_outputs(Path(live.record.outputs_dir), within=source)
            except (ValueError, OSError) as e:
                error = LauncherError(f"the outputs could not be read: {e}")
        if source.is_dir() and not source.is_symlink():
            try:
                backup.archive(self.keyring, source, wdir / "backup.wsb", wid, first)
            except (LauncherError, OSError) as e:
                error = LauncherError(f"the backup of /workspace failed: {e}")
        output = b"".join(_read_all(run / f"output.log{suffix}") for suffix in (".1", ""))
        sealed = self.keyring.seal(output, aad=_log_aad(wid))
        _write_atomic_bytes(wdir / "output.log.sealed", sealed)
        for suffix in (".1", ""):  # plaintext left by an older version
            (wdir / f"output.log{suffix}").unlink(missing_ok=True)
        self._cleanup_run(wid)
        self.cgroups.remove(wid)
        if error is not None:
            raise error
        return outputs

    def _sealed_log(self, workspace_id: str) -> bytes:
        """The kept output of the last finished run, decrypted; b"" when there is none."""
        assert self.keyring is not None
        wdir = self._dir(workspace_id)
        blob = _read_all(wdir / "output.log.sealed")
        if not blob:
            return b"".join(_read_all(wdir / f"output.log{suffix}") for suffix in (".1", ""))
        try:
            return self.keyring.open(blob, aad=_log_aad(workspace_id))
        except (EnvelopeError, ValueError):
            log.error("event=log_unreadable id=%s", workspace_id)
            return b"[wsgate: the kept output cannot be decrypted]\n"

    def _kill_leftovers(self, live: _Live) -> None:
        """Nothing of the workspace may outlive it: its init, then anything left in its cgroups."""
        if live.init_pid and _start_time(live.init_pid) == live.init_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(live.init_pid, signal.SIGKILL)
        assert self.cgroups is not None
        for _ in range(100):
            pids = self.cgroups.pids(live.record.id)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        if live.shim is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                live.shim.wait(timeout=5)

    def _cleanup_run(self, workspace_id: str) -> None:
        run = self._dir(workspace_id) / "run"
        if run.exists() or run.is_symlink():
            # rmtree never follows symlinks (it works on directory descriptors).
            shutil.rmtree(run, ignore_errors=True)
            if run.exists():
                raise LauncherError(f"cannot remove {run}; is something still mounted there?")

    # --- stop, delete, visibility --------------------------------------------------
    async def stop(self, workspace_id: str) -> Workspace:
        live = self._live.get(workspace_id)
        if live is None:
            raise LauncherError("no such workspace")
        async with live.lock:
            if live.record.state not in LIVE:
                return live.record
            live.stop_requested = True
            live.record = dataclasses.replace(live.record, state=STOPPING)
            await self._save(live)
            self._publish(live)
            self._signal(live, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.ended.wait(), self.settings.stop_grace)
            if not live.ended.is_set():
                log.warning(
                    "event=workspace_kill id=%s reason=%r", workspace_id, "did not stop within the grace period"
                )
                self._signal(live, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.ended.wait(), 10)
            if not live.ended.is_set():
                if live.control is not None:
                    live.control.close()
                elif live.exit_task is None:
                    live.ended.set()
                    live.exit_task = asyncio.get_running_loop().create_task(self._finish(workspace_id))
            await live.finalized.wait()
            return live.record

    def _signal(self, live: _Live, sig: int) -> None:
        if live.init_pid and _start_time(live.init_pid) == live.init_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(live.init_pid, sig)

    async def delete(self, workspace_id: str) -> None:
        live = self._live.get(workspace_id)
        if live is None:
            raise LauncherError("no such workspace")
        await self.stop(workspace_id)
        async with live.lock:
            await asyncio.to_thread(shutil.rmtree, self._dir(workspace_id), True)
            self._live.pop(workspace_id, None)
            live.record = dataclasses.replace(live.record, state="deleted")
            self._publish(live)

    async def set_visibility(self, workspace_id: str, port: int, visibility: str) -> Workspace:
        live = self._live.get(workspace_id)
        if live is None:
            raise LauncherError("no such workspace")
        if visibility not in ("public", "private"):
            raise LauncherError("visibility: must be 'public' or 'private'")
        ports = list(live.record.ports)
        for i, p in enumerate(ports):
            if p.number == port:
                ports[i] = dataclasses.replace(p, visibility=visibility)
                break
        else:
            ports.append(PortSpec(port, "", visibility))
        live.record = dataclasses.replace(live.record, ports=tuple(ports))
        await self._save(live)
        self._publish(live)
        return live.record

    def run_dir(self, workspace_id: str) -> str:
        """Where the running workspace's control socket lives (for other gateway processes on this machine)."""
        return str((self._dir(workspace_id) / "run").resolve())

    # --- connections and output --------------------------------------------------------
    async def connect(self, workspace_id: str, port: int) -> socket.socket:
        live = self._live.get(workspace_id)
        if live is None or live.record.state != RUNNING or live.control is None:
            raise NotRunning("the workspace is not running")
        assert self._loop is not None
        sock = await live.control.new_socket()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self._loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def follow(self, workspace_id: str, *, live: bool = True) -> AsyncIterator[bytes]:
        item = self._live.get(workspace_id)
        if item is None:
            return
        wdir = self._dir(workspace_id)
        if item.record.state not in LIVE:
            data = await asyncio.to_thread(self._sealed_log, workspace_id)
            if data:
                yield data
            return
        data = await asyncio.to_thread(_read_all, wdir / "run" / "output.log.1")
        if data:
            yield data
        current: Any = None
        inode = -1
        seen = data[-_SEEN_BYTES:]  # the end of what was yielded: where the sealed log takes over
        while True:
            running = item.record.state in LIVE and self._live.get(workspace_id) is item
            path = wdir / "run" / "output.log"
            with contextlib.suppress(OSError):
                st = path.stat()
                if st.st_ino != inode:
                    # Let go of the old file before yielding: the new one may be gone (sealed at the
                    # end of the run) by the time the reader comes back, and a closed file must not
                    # be read again.
                    old, current, inode = current, None, -1
                    if old is not None:
                        rest = old.read()
                        old.close()
                        if rest:
                            seen = (seen + rest)[-_SEEN_BYTES:]
                            yield rest
                    current = open(path, "rb")  # noqa: SIM115 - kept open across rotations
                    inode = st.st_ino
            if current is not None:
                chunk = current.read(1 << 16)
                if chunk:
                    seen = (seen + chunk)[-_SEEN_BYTES:]
                    yield chunk
                    continue
            if not running or not live:
                # One last read: the end may have landed between the check and now.
                if current is not None:
                    rest = current.read()
                    current.close()
                    if rest:
                        seen = (seen + rest)[-_SEEN_BYTES:]
                        yield rest
                if not running:
                    # The run is sealed by now, and the file held open may have been rotated away
                    # before its successor could be opened: what was not read yet comes from the seal.
                    data = _unread(seen, await asyncio.to_thread(self._sealed_log, workspace_id))
                    if data:
                        yield data
                return
            await asyncio.sleep(0.02)

    def tail(self, workspace_id: str) -> str:
        """The last lines of the output, for a failed workspace's status."""
        with contextlib.suppress(OSError), open(self._dir(workspace_id) / "run" / "output.log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-_TAIL_LINES:])
        data = self._sealed_log(workspace_id)[-_TAIL_BYTES:]
        return "\n".join(data.decode(errors="replace").splitlines()[-_TAIL_LINES:])

    # --- records ---------------------------------------------------------------------
    async def _save(self, live: _Live, record: Workspace | None = None) -> None:
        """Writes the record; with ``record``, on disk first and only then in memory.

        One writer at a time, each writing the record as it is when its turn comes:
        the file always ends with the latest state.  A run's end goes to disk before
        anyone can see it, so whoever sees it ended finds the same on disk.
        """
        async with live.save_lock:
            data = _to_json(live, record)
            await asyncio.to_thread(_write_atomic, self._dir(live.record.id) / "record.json", data)
            if record is not None:
                live.record = record

    async def _adopt(self, workspace_id: str) -> None:
        wdir = self._dir(workspace_id)
        raw = json.loads((wdir / "record.json").read_text())
        live = _from_json(raw)
        self._live[workspace_id] = live
        if live.record.state not in LIVE:
            live.finalized.set()
            return
        run = wdir / "run"
        with contextlib.suppress(OSError, ValueError):
            shim_pid, init_pid = (int(x) for x in (run / "pid").read_text().split())
            live.init_pid, live.shim_pid = init_pid, shim_pid
        if live.init_pid and live.init_start and _start_time(live.init_pid) == live.init_start:
            await self._attach(live)
            if not live.ended.is_set():
                live.record = dataclasses.replace(live.record, state=RUNNING)
                await self._save(live)
                log.info("event=workspace_adopted id=%s pid=%d", workspace_id, live.init_pid)
                return
            await live.finalized.wait()
            return
        # Gone, or half-started when the gateway died: keep its data, clean up the rest.
        live.stop_requested = live.record.state == STOPPING
        await self._finish(workspace_id)
        log.info("event=workspace_cleaned_up id=%s state=%s", workspace_id, live.record.state)


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _read_all(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _write_atomic(path: Path, data: str) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o711)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unread(seen: bytes, kept: bytes) -> bytes:
    """What of the kept output comes after ``seen``, the end of what a reader already has.

    The kept output is the last two log files; the reader may be inside it, straddle its
    start, or have fallen behind it (the middle rotated away unread): then all of it is new.
    """
    if not seen:
        return kept
    at = kept.rfind(seen)
    if at >= 0:
        return kept[at + len(seen):]
    # The end of what was read is the start of what was kept (at least 16 bytes, so that a
    # common line ending alone is not taken for an overlap).
    i = seen.find(kept[:1])
    while 0 <= i <= len(seen) - _MIN_OVERLAP:
        if kept.startswith(seen[i:]):
            return kept[len(seen) - i:]
        i = seen.find(kept[:1], i + 1)
    return kept


def _log_aad(workspace_id: str) -> bytes:
    # Bound to the workspace: a sealed log copied into another workspace's directory does not open.
    return b"wsgate-log:" + workspace_id.encode()


def _to_json(live: _Live, record: Workspace | None = None) -> str:
    w = record or live.record
    return json.dumps(
        {
            "version": 1,
            "id": w.id,
            "owner": w.owner,
            "command": w.command,
            "base": w.base,
            "state": w.state,
            "ports": [{"number": p.number, "name": p.name, "visibility": p.visibility} for p in w.ports],
            "ide_port": w.ide_port,
            "created": w.created,
            "started": w.started,
            "finished": w.finished,
            "exit_code": w.exit_code,
            "error": w.error,
            "kind": w.kind,
            "labels": dict(w.labels),
            "outputs_dir": w.outputs_dir,
            "outputs": [{"path": o.path, "sha256": o.sha256, "size": o.size} for o in w.outputs],
            "log_bytes": w.log_bytes,
            "slot": live.slot,
            "env_sealed": live.env_sealed,
            "init_start": live.init_start,
            "limits": dataclasses.asdict(live.limits),
        },
        indent=1,
    )


def _from_json(raw: Mapping[str, Any]) -> _Live:
    record = Workspace(
        id=raw["id"],
        owner=raw["owner"],
        command=raw["command"],
        base=raw["base"],
        state=raw["state"],
        ports=tuple(
            PortSpec(int(p["number"]), p.get("name", ""), p.get("visibility", "private")) for p in raw["ports"]
        ),
        ide_port=raw.get("ide_port"),
        created=raw.get("created", 0.0),
        started=raw.get("started"),
        finished=raw.get("finished"),
        exit_code=raw.get("exit_code"),
        error=raw.get("error", ""),
        kind=raw.get("kind", "workspace"),
        labels=raw.get("labels", {}),
        outputs_dir=raw.get("outputs_dir", ""),
        outputs=tuple(OutputFile(o["path"], o["sha256"], int(o["size"])) for o in raw.get("outputs", ())),
        log_bytes=int(raw.get("log_bytes", 0)),
    )
    return _Live(
        record,
        slot=int(raw.get("slot", -1)),
        env_sealed=raw.get("env_sealed", ""),
        init_start=int(raw.get("init_start", 0)),
        limits=Limits(**raw.get("limits", {})),
    )


__all__ = ["PUBLIC", "LauncherSettings", "NamespaceLauncher"]
