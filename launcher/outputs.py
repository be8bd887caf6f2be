"""Digests of the files a run leaves behind (a prebuild's outputs), read without trusting them.

Everything under `/workspace` was written by the workspace's code, which may
plant symlinks to host files, fifos that block a reader, or deep trees. The
walk opens every component relative to a directory descriptor with
O_NOFOLLOW, hashes regular files only, streams them in chunks, and stops at
fixed limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat

from .base import LauncherError, OutputFile

MAX_FILES = 10_000
MAX_DEPTH = 32
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def open_below(root_fd: int, relative: str) -> int | None:
    """A descriptor of the directory `relative` under root_fd; None when a component is missing or a link."""
    fd = os.dup(root_fd)
    try:
        for part in relative.split("/"):
            if part in ("", ".", ".."):
                return None
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                return None
            os.close(fd)
            fd = nxt
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def digest_tree(dir_fd: int, *, max_files: int = MAX_FILES, max_depth: int = MAX_DEPTH) -> tuple[OutputFile, ...]:
    """Every regular file below dir_fd with its SHA-256, sorted by path. Links, devices and fifos are skipped."""
    found: list[OutputFile] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        if depth > max_depth:
            raise LauncherError(f"outputs: deeper than {max_depth} directories")
        with os.scandir(fd) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            if not name.isprintable() or "/" in name:
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            path = f"{prefix}{name}"
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    walk(sub, path + "/", depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                if len(found) >= max_files:
                    raise LauncherError(f"outputs: more than {max_files} files")
                digest = _hash_file(fd, name)
                if digest is not None:
                    found.append(OutputFile(path, digest[0], digest[1]))

    walk(dir_fd, "", 0)
    return tuple(sorted(found, key=lambda f: f.path))


def _hash_file(dir_fd: int, name: str) -> tuple[str, int] | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
            return None
        os.set_blocking(fd, True)
        h = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def digest_outputs(workspace_dir: str, relative: str) -> tuple[OutputFile, ...]:
    """Digests of the files under `<workspace_dir>/<relative>`; () when it is missing or reached through a link."""
    try:
        root = os.open(workspace_dir, _DIR_FLAGS)
    except OSError:
        return ()
    try:
        fd = open_below(root, relative)
    finally:
        os.close(root)
    if fd is None:
        return ()
    with contextlib.closing(_Fd(fd)):
        return digest_tree(fd)


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)
