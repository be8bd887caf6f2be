"""The embedded launcher on real namespaces: what a workspace sees inside, and what it cannot reach."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from launcher.base import FAILED, LIVE, RUNNING, STOPPED, Limits, PortSpec, StartRequest, Workspace
from launcher.namespaces import LauncherSettings, NamespaceLauncher

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[NamespaceLauncher]:
    lc = NamespaceLauncher(
        LauncherSettings(
            state_dir=tmp_path / "state",
            stop_grace=1.0,
            stop_on_exit=True,
            limits=Limits(memory_bytes=512 << 20, pids=64),
            connect_timeout=2.0,
        )
    )
    await lc.open()
    yield lc
    await lc.close()


async def run(lc: NamespaceLauncher, command: str, **kw: object) -> tuple[Workspace, str]:
    """Runs a command to its end; returns the final record and the output."""
    w = await lc.start(StartRequest(owner="dev:alice", command=command, **kw))  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while lc.get(w.id).state in LIVE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the workspace did not end"
        await asyncio.sleep(0.02)
    out = b"".join([c async for c in lc.follow(w.id, live=False)])
    final = lc.get(w.id)
    assert final is not None
    return final, out.decode(errors="replace")


async def wait_listening(lc: NamespaceLauncher, wid: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return await lc.connect(wid, port)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


async def http_get(sock: socket.socket, path: str = "/") -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = b""
    while chunk := await loop.sock_recv(sock, 65536):
        data += chunk
    sock.close()
    return data


async def test_inside_root_pid1_hostname_and_private_proc(launcher: NamespaceLauncher) -> None:
    w, out = await run(
        launcher,
        "id -u; id -g; hostname; cat /proc/1/comm; ls /proc | grep -c '^[0-9]*$'; "
        "cat /proc/self/uid_map; cd /workspace && pwd",
    )
    lines = out.split()
    assert w.state == STOPPED and w.exit_code == 0, out
    assert lines[0] == "0" and lines[1] == "0"
    assert lines[2] == w.id
    assert lines[3] == "wsgate-init"
    # Only the init, the shell and its few children: none of the host's processes.
    assert int(lines[4]) < 10
    if os.geteuid() == 0:
        # Root inside is an unprivileged range on the host, never host root.
        assert lines[5] == "0" and int(lines[6]) >= 65536
    assert lines[-1] == "/workspace"


async def test_host_files_outside_the_base_are_hidden_and_the_base_is_not_written(
    launcher: NamespaceLauncher, tmp_path: Path
) -> None:
    marker = Path("/tmp/wsgate-host-only-marker")
    marker.write_text("host")
    probe = Path("/wsgate-written-from-a-workspace")
    probe.unlink(missing_ok=True)
    state = launcher.settings.state_dir.resolve()
    _w, out = await run(
        launcher,
        f"ls {marker} 2>&1; ls -A {state} 2>&1 | head -3; echo X; "
        f"echo pwned > {probe} && cat {probe}; ls /root 2>&1 | head -1; cat /etc/shadow 2>&1 | head -1",
    )
    assert "No such file" in out.splitlines()[0], out  # /tmp is the workspace's own tmpfs
    # The gateway's state directory (keys, records) shows as an empty, unreadable directory.
    assert out.split("X")[0].count("\n") <= 2 and "keys" not in out and "record.json" not in out, out
    assert "pwned" in out  # written to the workspace's own layer...
    assert not probe.exists()  # ...and never to the host
    assert "root:" not in out  # the host's password hashes stay unreadable
    marker.unlink()


async def test_port_is_reachable_through_the_launcher_only(launcher: NamespaceLauncher) -> None:
    w = await launcher.start(
        StartRequest(
            owner="dev:alice", command="exec python3 -m http.server 18777 --bind 0.0.0.0", ports=(PortSpec(18777),)
        )
    )
    sock = await wait_listening(launcher, w.id, 18777)
    assert (await http_get(sock)).startswith(b"HTTP/1.0 200")
    # The host's loopback is another network namespace: nothing listens there.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 18777), timeout=2).close()
    # Another workspace cannot connect to it either.
    _, out = await run(
        launcher,
        "python3 -c \"import socket\ntry:\n socket.create_connection(('127.0.0.1', 18777), 2); print('OPEN')\n"
        "except OSError as e: print('REFUSED', e)\"",
    )
    assert "REFUSED" in out and "OPEN" not in out, out
    await launcher.stop(w.id)


async def test_outbound_network_is_off(launcher: NamespaceLauncher) -> None:
    _, out = await run(launcher, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; ip route 2>&1 | head -1")
    assert out.split()[0] == "lo"
    assert "default" not in out


async def test_environment_is_sealed_at_rest_and_given_to_the_process(launcher: NamespaceLauncher) -> None:
    secret = "sekrit-" + os.urandom(8).hex()
    w, out = await run(launcher, "echo value=$API_KEY", env={"API_KEY": secret})
    assert f"value={secret}" in out
    record = (launcher.root / w.id / "record.json").read_bytes()
    assert secret.encode() not in record
    assert json.loads(record)["env_sealed"]


async def restart_and_wait(lc: NamespaceLauncher, wid: str) -> tuple[Workspace, str]:
    """Starts a stopped workspace again (same command) and waits for its end."""
    w = await lc.start(StartRequest(owner="dev:alice", command="unused"), workspace_id=wid)
    assert w.state == RUNNING
    deadline = time.monotonic() + 20
    while lc.get(wid).state in LIVE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    out = b"".join([c async for c in lc.follow(wid, live=False)])
    final = lc.get(wid)
    assert final is not None
    return final, out.decode(errors="replace")


async def test_workspace_data_survives_stop_and_start_through_an_encrypted_backup(launcher: NamespaceLauncher) -> None:
    marker = "persist-" + os.urandom(6).hex()
    command = (
        "if [ -f /workspace/notes.txt ]; then echo found $(cat /workspace/notes.txt) $(readlink /workspace/link); "
        f"else echo {marker} > /workspace/notes.txt; ln -s /etc/hostname /workspace/link; echo first; fi"
    )
    w, out = await run(launcher, command)
    assert "first" in out
    backup = launcher.root / w.id / "backup.wsb"
    assert backup.exists() and marker.encode() not in backup.read_bytes()
    # Nothing of the run is left on disk but the record, the backup and the output.
    kept = sorted(p.name for p in (launcher.root / w.id).iterdir())
    assert kept == ["backup.wsb", "output.log.sealed", "record.json"]
    again, out = await restart_and_wait(launcher, w.id)
    assert again.exit_code == 0
    assert f"found {marker} /etc/hostname" in out
    # A fresh workspace starts empty.
    _, out = await run(launcher, "ls -A /workspace | wc -l")
    assert out.split()[-1] == "0"


async def test_a_tampered_backup_refuses_to_start(launcher: NamespaceLauncher) -> None:
    w, _ = await run(launcher, "head -c 100000 /dev/urandom > /workspace/data")
    backup = launcher.root / w.id / "backup.wsb"
    blob = bytearray(backup.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    backup.write_bytes(bytes(blob))
    with pytest.raises(Exception, match="damaged or was tampered with"):
        await launcher.start(StartRequest(owner="dev:alice", command="x"), workspace_id=w.id)
    final = launcher.get(w.id)
    assert final is not None and final.state == FAILED and "tampered" in final.error
    assert not (launcher.root / w.id / "run").exists()


async def test_symlinks_to_host_paths_survive_backup_as_links_only(launcher: NamespaceLauncher) -> None:
    before = Path("/etc/hostname").read_bytes()
    w, _ = await run(
        launcher,
        "[ -L /workspace/hostfile ] && { readlink /workspace/hostfile /workspace/d/etc; exit 0; }; "
        "ln -s /etc/hostname /workspace/hostfile; ln -s / /workspace/hostroot; mkdir -p /workspace/d; "
        "ln -s /etc /workspace/d/etc",
    )
    assert w.exit_code == 0
    again, out = await restart_and_wait(launcher, w.id)
    # The links came back as links (interpreted inside the workspace), and the host is untouched.
    assert again.exit_code == 0
    assert out.split() == ["/etc/hostname", "/etc"], out
    assert Path("/etc/hostname").read_bytes() == before
    assert not Path("/etc/d").exists()


async def test_a_fork_bomb_hits_the_pids_limit_and_stop_still_completes(launcher: NamespaceLauncher) -> None:
    if launcher.cgroups is None or not launcher.cgroups.available:
        pytest.skip("cgroups are not available on this host")
    bomb = (
        "exec python3 -c 'import os, time\n"
        "for i in range(2000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(\"forks refused\", flush=True); time.sleep(60)'"
    )
    w = await launcher.start(StartRequest(owner="dev:alice", command=bomb))
    deadline = time.monotonic() + 15
    out = b""
    while b"forks refused" not in out:
        assert time.monotonic() < deadline, out
        await asyncio.sleep(0.1)
        out = b"".join([c async for c in launcher.follow(w.id, live=False)])
    pids = launcher.cgroups.pids(w.id)
    assert 32 < len(pids) <= 64
    t = time.monotonic()
    final = await launcher.stop(w.id)
    assert final.state in (STOPPED, FAILED)
    assert time.monotonic() - t < 6
    assert launcher.cgroups.pids(w.id) == []


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(launcher: NamespaceLauncher) -> None:
    w = await launcher.start(StartRequest(owner="dev:alice", command="trap '' TERM; sleep 1000 & wait; sleep 1000"))
    await asyncio.sleep(0.2)
    t = time.monotonic()
    final = await launcher.stop(w.id)
    elapsed = time.monotonic() - t
    assert final.state == STOPPED
    assert 0.9 < elapsed < 5, elapsed
    left = [p for p in psutil.process_iter(["cmdline"]) if w.id in " ".join(p.info["cmdline"] or [])]
    assert not left


async def test_a_crashing_command_is_failed_with_its_exit_code_and_output(launcher: NamespaceLauncher) -> None:
    w, _out = await run(launcher, "echo about to fail >&2; exit 3")
    assert w.state == FAILED and w.exit_code == 3
    assert "exited with code 3" in w.error
    assert "about to fail" in launcher.tail(w.id)


async def test_no_mounts_or_processes_are_left_behind(launcher: NamespaceLauncher) -> None:
    w = await launcher.start(StartRequest(owner="dev:alice", command="sleep 1000 & sleep 1000"))
    await asyncio.sleep(0.2)
    await launcher.stop(w.id)
    state = str(launcher.settings.state_dir.resolve())
    assert state not in Path("/proc/self/mountinfo").read_text()
    for p in psutil.process_iter(["cmdline"]):
        assert w.id not in " ".join(p.info["cmdline"] or []), p
    assert not (launcher.root / w.id / "run").exists()


async def test_two_workspaces_get_disjoint_host_id_ranges(launcher: NamespaceLauncher) -> None:
    if os.geteuid() != 0:
        pytest.skip("subordinate ranges need root")
    a = await launcher.start(StartRequest(owner="dev:alice", command="sleep 1000"))
    b = await launcher.start(StartRequest(owner="dev:bob", command="sleep 1000"))
    await asyncio.sleep(0.1)

    def host_uid(wid: str) -> int:
        for p in psutil.process_iter(["cmdline", "uids"]):
            if p.info["cmdline"] == ["sleep", "1000"] and any(wid in " ".join(a.cmdline()) for a in p.parents()):
                return int(p.info["uids"].real)
        raise AssertionError("no process")

    ua, ub = host_uid(a.id), host_uid(b.id)
    assert ua != ub and ua != 0 and ub != 0
    assert abs(ua - ub) >= launcher.settings.id_count
    await launcher.stop(a.id)
    await launcher.stop(b.id)


async def test_kept_output_is_sealed_at_rest_and_still_readable(launcher: NamespaceLauncher) -> None:
    marker = "secret-output-" + os.urandom(6).hex()
    w, out = await run(launcher, f"echo {marker}; echo second line")
    assert out == f"{marker}\nsecond line\n"
    sealed = launcher.root / w.id / "output.log.sealed"
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert marker.encode() not in sealed.read_bytes()
    # Bound to its workspace: the same blob under another id does not open.
    other, _ = await run(launcher, "true")
    (launcher.root / other.id / "output.log.sealed").write_bytes(sealed.read_bytes())
    assert b"cannot be decrypted" in b"".join([c async for c in launcher.follow(other.id, live=False)])
    # A restart shows the previous run's output until the new one writes its own.
    again, out = await restart_and_wait(launcher, w.id)
    assert again.exit_code == 0 and out.count(marker) == 2


async def test_outputs_are_digested_without_following_planted_links(launcher: NamespaceLauncher) -> None:
    command = (
        "mkdir -p /workspace/.prebuild/outputs/dist && cd /workspace/.prebuild/outputs && "
        "printf hello > a.txt && head -c 300000 /dev/zero > dist/big.bin && "
        "ln -s /etc/passwd leak && mkfifo pipe && ln -s / dist/root"
    )
    w, _ = await run(launcher, command, outputs_dir=".prebuild/outputs")
    assert w.exit_code == 0
    import hashlib

    assert [(o.path, o.size) for o in w.outputs] == [("a.txt", 5), ("dist/big.bin", 300000)]
    assert w.outputs[0].sha256 == hashlib.sha256(b"hello").hexdigest()
    assert w.outputs[1].sha256 == hashlib.sha256(bytes(300000)).hexdigest()
    # Kept in the record across a launcher restart.
    raw = json.loads((launcher.root / w.id / "record.json").read_text())
    assert [o["path"] for o in raw["outputs"]] == ["a.txt", "dist/big.bin"]
    # An outputs directory reached through a link digests nothing of what the link points at.
    w2, _ = await run(launcher, "mkdir -p /workspace/.prebuild && ln -s /etc /workspace/.prebuild/outputs",
                      outputs_dir=".prebuild/outputs")
    assert w2.state == STOPPED and w2.outputs == ()


async def test_a_smaller_log_per_request_bounds_what_is_kept(launcher: NamespaceLauncher) -> None:
    _, out = await run(launcher, "head -c 200000 /dev/zero | tr '\\0' x; echo; echo end", log_bytes=16384)
    assert len(out) <= 16384 and out.endswith("end\n")


async def test_a_follower_paused_across_rotation_and_the_seal_still_gets_the_end(launcher: NamespaceLauncher) -> None:
    # The reader holds the first log file open, then does not come back until the run has rotated
    # that file away twice and been sealed: the file it would have opened next no longer exists.
    w = await launcher.start(
        StartRequest(
            owner="dev:alice",
            command="echo first; sleep 1; head -c 20000 /dev/zero | tr '\\0' B; echo; echo last-line",
            log_bytes=8192,
        )
    )
    stream = launcher.follow(w.id)
    assert await anext(stream) == b"first\n"
    deadline = time.monotonic() + 20
    while launcher.get(w.id).state in LIVE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the workspace did not end"
        await asyncio.sleep(0.02)
    rest = b"".join([c async for c in stream])
    assert rest.endswith(b"B\nlast-line\n")
    # What the reader missed is the rotated middle, never anything twice.
    assert b"first" not in rest and len(rest) <= 8192 + 4096


def test_the_sealed_log_takes_over_where_the_reader_was() -> None:
    from launcher.namespaces import _unread

    kept = b"line one\nline two\nline three\n"
    assert _unread(b"", kept) == kept
    assert _unread(b"older\nline one\nline two\n", kept) == b"line three\n"  # inside the kept part
    assert _unread(kept, kept) == b""
    # Straddling its start: the reader had the end of a file rotated away and the start of this one.
    assert _unread(b"rotated away\nline one\nline two\nline", kept) == b" three\n"
    # Fallen behind it: all of it is new; a shared line ending alone is no overlap.
    assert _unread(b"something else entirely\n", kept) == kept
    assert _unread(b"x\nline", b"line two\n") == b"line two\n"
