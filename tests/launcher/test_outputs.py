"""The walk over a prebuild's outputs: digests of what untrusted code wrote, following nothing it planted."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from launcher.base import OutputFile
from launcher.outputs import digest_outputs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_digests_match_files_including_nested_and_large(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    (out / "dist" / "deep" / "er").mkdir(parents=True)
    (out / "empty-dir").mkdir()
    big = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    files = {"b.txt": b"bee", "a.txt": b"", "dist/app.bin": big, "dist/deep/er/x": b"x" * 100}
    for rel, data in files.items():
        (out / rel).write_bytes(data)
    got = digest_outputs(out)
    assert got == tuple(OutputFile(rel, sha(data), len(data)) for rel, data in sorted(files.items()))


def test_symlinks_special_files_and_odd_names_are_not_followed_nor_reported(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret")
    out = tmp_path / "outputs"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "real").write_bytes(b"real")
    os.symlink("/etc/passwd", out / "passwd")
    os.symlink(outside, out / "outside-dir")
    os.symlink(outside / "secret", out / "sub" / "secret")
    os.symlink("missing", out / "dangling")
    os.mkfifo(out / "fifo")  # opening it for reading would block forever
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(out / "sock"))
    (out / "bad\nname").write_bytes(b"control character")
    (out / "rtl\u202eexe.txt").write_bytes(b"bidi override")
    (out / os.fsdecode(b"latin1-\xe9")).write_bytes(b"not utf-8")
    got = digest_outputs(out)
    assert got == (OutputFile("sub/real", sha(b"real"), 4),)


def test_missing_or_symlinked_outputs_dir_gives_nothing(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_bytes(b"f")
    assert digest_outputs(tmp_path / "missing") == ()
    os.symlink(real, tmp_path / "link")
    assert digest_outputs(tmp_path / "link") == ()
    (tmp_path / "file").write_bytes(b"not a dir")
    assert digest_outputs(tmp_path / "file") == ()


def test_within_guards_every_component(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    host = tmp_path / "host"
    (host / "outputs").mkdir(parents=True)
    (host / "outputs" / "hostfile").write_bytes(b"host")
    (workspace / "real" / "outputs").mkdir(parents=True)
    (workspace / "real" / "outputs" / "f").write_bytes(b"f")
    os.symlink(host, workspace / ".prebuild")  # planted by the workspace
    assert digest_outputs(Path("real/outputs"), within=workspace) == (OutputFile("f", sha(b"f"), 1),)
    assert digest_outputs(Path(".prebuild/outputs"), within=workspace) == ()
    assert digest_outputs(workspace / ".prebuild" / "outputs") != ()  # why `within` exists
    assert digest_outputs(Path("../host/outputs"), within=workspace) == ()
    assert digest_outputs(Path("missing/outputs"), within=workspace) == ()


def test_limits(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x")
    assert len(digest_outputs(tmp_path, max_files=5)) == 5
    with pytest.raises(ValueError, match="max_files"):
        digest_outputs(tmp_path, max_files=4)
    deep = tmp_path / "deep"
    d = deep
    for i in range(4):
        d = d / str(i)
    d.mkdir(parents=True)
    (d / "f").write_bytes(b"f")
    assert digest_outputs(deep, max_depth=4) == (OutputFile("0/1/2/3/f", sha(b"f"), 1),)
    with pytest.raises(ValueError, match="max_depth"):
        digest_outputs(deep, max_depth=3)
