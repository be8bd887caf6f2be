"""Encrypted backups of /workspace: what reaches disk, tampering, and trees a workspace planted."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from certs.envelope import Keyring
from launcher.backup import BackupError, archive, restore

WID = "wabcdefghijklmnop"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.load_or_create(tmp_path / "keys" / "launcher.keyring")


def make_tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('top secret plaintext marker')\n")
    (root / "empty").mkdir()
    os.symlink("/etc/passwd", root / "passwd-link")
    os.symlink("../src", root / "empty" / "up")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))


def snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def test_round_trip_keeps_files_and_links_as_links(tmp_path: Path, keyring: Keyring) -> None:
    src = tmp_path / "ws"
    make_tree(src)
    archive(keyring, src, tmp_path / "b.wsb", WID, 0)
    restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, 0, 0)
    assert snapshot(tmp_path / "out") == snapshot(src)
    # The link was stored as a link, not as the host file it points at.
    assert os.readlink(tmp_path / "out" / "passwd-link") == "/etc/passwd"


def test_stored_bytes_do_not_contain_the_plaintext(tmp_path: Path, keyring: Keyring) -> None:
    src = tmp_path / "ws"
    make_tree(src)
    archive(keyring, src, tmp_path / "b.wsb", WID, 0)
    data = (tmp_path / "b.wsb").read_bytes()
    assert b"top secret plaintext marker" not in data
    assert b"main.py" not in data
    assert (tmp_path / "b.wsb").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["header", "middle", "end"])
def test_a_flipped_bit_is_refused_and_nothing_is_restored(tmp_path: Path, keyring: Keyring, where: str) -> None:
    src = tmp_path / "ws"
    make_tree(src)
    archive(keyring, src, tmp_path / "b.wsb", WID, 0)
    blob = bytearray((tmp_path / "b.wsb").read_bytes())
    index = {"header": 6, "middle": len(blob) // 2, "end": len(blob) - 3}[where]
    blob[index] ^= 0x01
    (tmp_path / "b.wsb").write_bytes(bytes(blob))
    with pytest.raises(BackupError, match=r"damaged or was tampered with|cannot be"):
        restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, 0, 0)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.restore").exists()


def test_a_truncated_backup_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    src = tmp_path / "ws"
    make_tree(src)
    archive(keyring, src, tmp_path / "b.wsb", WID, 0)
    blob = (tmp_path / "b.wsb").read_bytes()
    (tmp_path / "b.wsb").write_bytes(blob[: len(blob) - (1 << 20)])
    with pytest.raises(BackupError):
        restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, 0, 0)
    assert not (tmp_path / "out").exists()


def test_another_workspaces_backup_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    src = tmp_path / "ws"
    make_tree(src)
    archive(keyring, src, tmp_path / "b.wsb", "wothersworkspace2", 0)
    with pytest.raises(BackupError):
        restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, 0, 0)


def sealed_tar(keyring: Keyring, path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    with open(path, "wb") as out:
        keyring.seal_stream(io.BytesIO(buf.getvalue()), out, aad=b"wsgate-backup:" + WID.encode())


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    return info, data


@pytest.mark.parametrize(
    "members",
    [
        # A link to a host directory, then a file written through it.
        [entry("esc", tarfile.SYMTYPE, link="/tmp"), entry("esc/wsgate-escape-probe", data=b"x")],
        [entry("../wsgate-escape-probe", data=b"x")],
        [entry("/tmp/wsgate-escape-probe", data=b"x")],
        [entry("a/../../wsgate-escape-probe", data=b"x")],
        [entry("dev", tarfile.CHRTYPE)],
        [entry("hard", tarfile.LNKTYPE, link="/etc/passwd")],
    ],
    ids=["through-symlink", "dotdot", "absolute", "nested-dotdot", "device", "hardlink"],
)
def test_a_planted_archive_cannot_write_outside(tmp_path: Path, keyring: Keyring, members: list) -> None:
    probe = Path("/tmp/wsgate-escape-probe")
    probe.unlink(missing_ok=True)
    sealed_tar(keyring, tmp_path / "b.wsb", members)
    with pytest.raises(BackupError):
        restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, 0, 0)
    assert not probe.exists()
    assert not (tmp_path / "wsgate-escape-probe").exists()
    assert not (tmp_path / "out").exists()


def test_owners_are_mapped_into_the_workspace_range(tmp_path: Path, keyring: Keyring) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    src = tmp_path / "ws"
    make_tree(src)
    base = 3_000_000
    for p in [src, *src.rglob("*")]:
        os.lchown(p, base + 1000, base + 1000)
    archive(keyring, src, tmp_path / "b.wsb", WID, base)
    other = 4_000_000
    restore(keyring, tmp_path / "b.wsb", tmp_path / "out", WID, other, 65536)
    owners = {p.lstat().st_uid for p in (tmp_path / "out").rglob("*")}
    assert owners == {other + 1000}
    # setuid bits never come back from a backup.
    assert not any(p.lstat().st_mode & 0o6000 for p in (tmp_path / "out").rglob("*"))
