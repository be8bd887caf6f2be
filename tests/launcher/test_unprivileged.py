"""The launcher run by an unprivileged user (a throwaway account): the weaker mode still isolates."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json, logging, sys
from pathlib import Path
from launcher.base import LIVE, StartRequest
from launcher.namespaces import LauncherSettings, NamespaceLauncher

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

async def main() -> None:
    state = Path(sys.argv[1])
    lc = NamespaceLauncher(LauncherSettings(state_dir=state, stop_grace=1, stop_on_exit=True))
    await lc.open()
    command = (
        "id -u; cat /proc/self/uid_map; hostname; cat /proc/1/comm; "
        f"ls -A {state.resolve()} | wc -l; echo kept > /workspace/x; "
        "python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 8000)); s.listen(); "
        "print(\"listening\")'"
    )
    w = await lc.start(StartRequest(owner="dev:a", command=command))
    while lc.get(w.id).state in LIVE:
        await asyncio.sleep(0.02)
    out = b"".join([c async for c in lc.follow(w.id, live=False)])
    final = lc.get(w.id)
    print(json.dumps({"out": out.decode(), "state": final.state, "exit": final.exit_code, "id": w.id,
                      "privileged": lc.privileged, "backup": (lc.root / w.id / "backup.wsb").exists()}))
    await lc.close()

asyncio.run(main())
"""


def require(condition: bool, what: str) -> None:
    """Skips locally, fails in CI (conftest's `require` cannot be imported: every conftest is `conftest`)."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"missing in CI: {what}")
    pytest.skip(f"missing: {what}")


@pytest.fixture
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    require(os.geteuid() == 0, "root, to create a throwaway user")
    require(shutil.which("useradd") is not None, "useradd")
    name = "wsgt" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def home(throwaway_user: pwd.struct_passwd) -> Iterator[Path]:
    # pytest's own temporary directories are private to root; this user needs its own.
    path = Path(tempfile.mkdtemp(prefix="wsgate-unpriv-", dir="/tmp"))
    os.chown(path, throwaway_user.pw_uid, throwaway_user.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_gateway_maps_root_to_its_own_uid(throwaway_user: pwd.struct_passwd, home: Path) -> None:
    state = home / "state"
    env = {k: v for k, v in os.environ.items() if k != "WSGATE_INIT_DIR"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    done = subprocess.run(
        ["setpriv", f"--reuid={throwaway_user.pw_uid}", f"--regid={throwaway_user.pw_gid}", "--clear-groups",
         sys.executable, "-c", SCRIPT, str(state)],
        capture_output=True, text=True, env=env, cwd=str(home), timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    lines = result["out"].split("\n")
    assert result["privileged"] is False
    assert result["state"] == "stopped" and result["exit"] == 0, result
    assert lines[0] == "0"  # root inside...
    # ...and the only id mapped: the gateway's own uid (seen through the shim's namespace).
    assert lines[1].split()[0] == "0" and lines[1].split()[2] == "1", lines[1]
    assert lines[2] == result["id"]
    assert lines[3] == "wsgate-init"
    # The gateway's state directory is hidden (empty, or not there at all).
    assert lines[4] == "0" or "No such file or directory" in lines[4], lines[4]
    assert "listening" in result["out"]  # its own loopback works
    assert result["backup"]
    # The start-up says plainly that this is the weaker mode.
    assert "launcher_unprivileged" in done.stderr
    # Nothing runs on after it, as that user.
    left = subprocess.run(["pgrep", "-u", str(throwaway_user.pw_uid)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""
