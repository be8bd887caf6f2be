"""Digests of the files a run leaves behind (a prebuild's outputs), read without trusting them.

Everything under `/workspace` was written by the workspace's code, which may
plant symlinks to host files, fifos that block a reader, mount points, odd
names or deep trees. The walk opens every component relative to a directory
descriptor with O_NOFOLLOW, hashes regular files only, streams them in
chunks, and stops at fixed limits.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .base import OutputFile

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a fifo slip in between our lstat and open, open must not hang.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def digest_outputs(
    directory: Path,
    *,
    within: Path | None = None,
    max_files: int = 10_000,
    max_depth: int = 32,
) -> tuple[OutputFile, ...]:
    """SHA-256 and size of every regular file under ``directory``, sorted by path.

    The tree was written by untrusted code, so nothing in it is followed:
    directories are opened relative to their parent's descriptor with
    O_NOFOLLOW, symlinks, devices, fifos and sockets are skipped (never even
    opened), names that are not printable text (control characters, bidi
    overrides, undecodable bytes) are skipped, and the walk stays on the
    directory's filesystem.  A missing directory, or one that is itself a
    symlink, gives ().

    ``within``, when given, is a trusted directory and ``directory`` is
    relative to it; every component of ``directory`` is then opened without
    following links, so a link planted higher up (``.prebuild`` pointing at
    the host's ``/``) also gives ().  Without it only the last component is
    guarded.

    Raises ValueError when the tree holds more than ``max_files`` files and
    directories or is deeper than ``max_depth``: a partial list would
    misreport the outputs.  This reads files: call it off the event loop.
    """
    top = _open_dir(directory, within)
    if top is None:
        return ()
    found: list[OutputFile] = []
    budget = [max_files]
    try:
        device = os.fstat(top).st_dev
        _walk(top, "", 0, device, max_depth, budget, found)
    finally:
        os.close(top)
    found.sort(key=lambda o: o.path)
    return tuple(found)


def _open_dir(directory: Path, within: Path | None) -> int | None:
    if within is None:
        try:
            return os.open(directory, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the directory itself is a symlink
                return None
            raise
    if directory.is_absolute():
        raise ValueError(f"directory must be relative to within: {directory}")
    try:
        fd = os.open(within, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        for part in directory.parts:
            if part in (".", ".."):
                return None
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return None
                raise
            os.close(fd)
            fd = nxt
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _walk(
    fd: int, prefix: str, depth: int, device: int, max_depth: int, budget: list[int], found: list[OutputFile]
) -> None:
    for entry in _entries(fd):
        name = entry.name
        if not name.isprintable():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:  # vanished meanwhile
            continue
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue  # symlinks, devices, fifos, sockets
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("outputs: too many files and directories (max_files)")
        path = prefix + name
        if stat.S_ISREG(st.st_mode):
            digested = _digest_file(fd, name, st)
            if digested is not None:
                found.append(OutputFile(path, *digested))
            continue
        if st.st_dev != device:  # a mount point: not part of what the build wrote
            continue
        if depth + 1 > max_depth:
            raise ValueError(f"outputs: deeper than {max_depth} directories (max_depth)")
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:  # replaced by a link or removed since the lstat
            continue
        try:
            opened = os.fstat(sub)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                continue  # swapped for another directory (a mount?) since the lstat
            _walk(sub, path + "/", depth + 1, device, max_depth, budget, found)
        finally:
            os.close(sub)


def _entries(fd: int) -> Iterator[os.DirEntry[str]]:
    # Unsorted (the result is sorted once at the end), so a huge directory is not held in memory.
    with os.scandir(fd) as it:
        yield from it


def _digest_file(dir_fd: int, name: str, expected: os.stat_result) -> tuple[str, int] | None:
    """Streams the file through SHA-256; None when it is no longer the regular file we listed."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            return None
        os.set_blocking(fd, True)
        h = hashlib.sha256()
        size = 0
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            size += n
        return h.hexdigest(), size
    finally:
        os.close(fd)
