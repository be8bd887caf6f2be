"""Encrypted backups of a workspace's /workspace, made and restored without trusting its contents.

A backup is a tar stream sealed chunk by chunk with AES-256-GCM (the certs
envelope), so the plaintext never reaches disk outside the workspace's own
layer.  Both directions run with the workspace stopped (no process can swap a
directory for a link mid-walk), and neither follows a link a workspace could
plant: the archive stores links as links, and the restore creates every entry
relative to directory descriptors opened with O_NOFOLLOW.  Owners are stored
as the container sees them (0 = the workspace's root) and mapped to the host
range of the workspace at restore.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import threading
from pathlib import Path
from typing import BinaryIO, cast

from certs.envelope import Keyring
from certs.errors import EnvelopeError

from .base import LauncherError

_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)


class BackupError(LauncherError):
    """A backup that cannot be trusted: tampered, truncated, or not ours."""


def _aad(workspace_id: str) -> bytes:
    # Binds a backup to its workspace: one cannot be swapped for another's.
    return b"wsgate-backup:" + workspace_id.encode()


def archive(keyring: Keyring, source: Path, target: Path, workspace_id: str, id_base: int) -> None:
    """Seals the tree at `source` into `target` (written beside it, then renamed into place)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with (
                os.fdopen(write_fd, "wb") as raw,
                tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                _add_tree(tar, source, id_base)
        except BaseException as e:  # reported by the consumer
            failure.append(e)

    producer = threading.Thread(target=produce, name="backup-tar", daemon=True)
    producer.start()
    tmp = target.with_name(target.name + ".tmp")
    try:
        with os.fdopen(read_fd, "rb") as src, open(tmp, "wb") as dst:
            os.fchmod(dst.fileno(), 0o600)
            keyring.seal_stream(src, dst, aad=_aad(workspace_id))
            dst.flush()
            os.fsync(dst.fileno())
        producer.join()
        if failure:
            raise LauncherError(f"backup of {workspace_id} failed: {failure[0]}")
        os.replace(tmp, target)
    finally:
        producer.join()
        tmp.unlink(missing_ok=True)


def _add_tree(tar: tarfile.TarFile, root: Path, id_base: int) -> None:
    if not root.is_dir() or root.is_symlink():
        return
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            info.uid = max(0, st.st_uid - id_base) if id_base else 0
            info.gid = max(0, st.st_gid - id_base) if id_base else 0
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                stack.append(name)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(entry.path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
            # Sockets, FIFOs, devices and overlay whiteouts are not workspace data.


def restore(keyring: Keyring, backup: Path, target: Path, workspace_id: str, id_base: int, id_count: int) -> None:
    """Unseals `backup` into the new directory `target`, or raises and leaves nothing behind."""
    staging = target.with_name(target.name + ".restore")
    _remove(staging)
    staging.mkdir(mode=0o755)
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def decrypt() -> None:
        try:
            with open(backup, "rb") as src, os.fdopen(write_fd, "wb") as dst:
                keyring.open_stream(src, cast(BinaryIO, _Pipe(dst)), aad=_aad(workspace_id))
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=decrypt, name="backup-open", daemon=True)
    worker.start()
    try:
        with os.fdopen(read_fd, "rb") as src:
            try:
                _extract(src, staging, id_base, id_count)
            finally:
                # Drain so that the decrypting thread finishes (and reports) either way.
                while src.read(1 << 16):
                    pass
        worker.join()
        if failure:
            err = failure[0]
            if isinstance(err, EnvelopeError):
                raise BackupError(f"the backup of {workspace_id} is damaged or was tampered with: {err}")
            raise BackupError(f"the backup of {workspace_id} cannot be read: {err}")
        if id_base:
            os.chown(staging, id_base, id_base)
        os.replace(staging, target)
    except (tarfile.TarError, OSError, ValueError) as e:
        worker.join()
        if failure and isinstance(failure[0], EnvelopeError):
            raise BackupError(f"the backup of {workspace_id} is damaged or was tampered with: {failure[0]}") from None
        raise BackupError(f"the backup of {workspace_id} cannot be restored: {e}") from None
    finally:
        worker.join()
        _remove(staging)


class _Pipe:
    """A writer that ignores the reader having gone (the error is reported elsewhere)."""

    def __init__(self, dst: BinaryIO) -> None:
        self.dst = dst

    def write(self, data: bytes) -> int:
        with contextlib.suppress(BrokenPipeError):
            self.dst.write(data)
        return len(data)


def _extract(src: BinaryIO, root: Path, id_base: int, id_count: int) -> None:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            for member in tar:
                parts = _parts(member.name)
                if member.type not in _TYPES:
                    raise ValueError(f"unexpected entry type in backup: {member.name!r}")
                parent = _open_parent(root_fd, parts[:-1])
                try:
                    _create(tar, member, parent, parts[-1], id_base, id_count)
                finally:
                    os.close(parent)
    finally:
        os.close(root_fd)


def _parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or any(p == ".." for p in parts) or "\x00" in name:
        raise ValueError(f"unsafe path in backup: {name!r}")
    return parts


def _open_parent(root_fd: int, parts: list[str]) -> int:
    fd = os.dup(root_fd)
    for part in parts:
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _create(tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, name: str, id_base: int, id_count: int) -> None:
    uid = id_base + m.uid if id_base and 0 <= m.uid < id_count else id_base
    gid = id_base + m.gid if id_base and 0 <= m.gid < id_count else id_base
    mode = m.mode & 0o1777  # never setuid/setgid from a backup
    if m.type == tarfile.DIRTYPE:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.fchmod(fd, mode)
            if id_base:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    elif m.type == tarfile.SYMTYPE:
        os.symlink(m.linkname, name, dir_fd=parent)
        if id_base:
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    else:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            data = tar.extractfile(m)
            if data is not None:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
            os.fchmod(out.fileno(), mode)
            if id_base:
                os.fchown(out.fileno(), uid, gid)
    with contextlib.suppress(OSError):
        os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
