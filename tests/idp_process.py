"""A real OpenID Connect identity provider for tests: `tests/idp/idp.js` (panva's oidc-provider).

`IdP.start(users, clients)` runs it on a free loopback port and returns once it
listens; `set_groups` changes a user's groups at runtime (revocation tests);
`restart()` keeps port and users but brings a new signing key (key rotation).
`sign_in_via_form` walks a browser's path through the IdP's login form with an
HTTP client and returns the redirect to the client's `redirect_uri`.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from wsgate_testing import free_port

IDP_DIR = Path(__file__).resolve().parent / "idp"
MODULES_STAMP = IDP_DIR / "node_modules" / ".package-lock.json"

User = dict[str, Any]
Client = dict[str, Any]


class IdPUnavailable(Exception):
    """Node.js or the IdP's node modules are missing and cannot be installed here."""


def ensure_node_modules() -> None:
    """Runs `npm ci` in tests/idp when its node_modules are missing or older than the lock file."""
    if shutil.which("node") is None:
        raise IdPUnavailable("node (Node.js) for the test IdP in tests/idp")
    lock = IDP_DIR / "package-lock.json"
    if MODULES_STAMP.exists() and MODULES_STAMP.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise IdPUnavailable("tests/idp/node_modules (npm is missing: run `npm ci --prefix tests/idp`)")
    # One installer at a time when several pytest processes start together.
    with open(Path(tempfile.gettempdir()) / "wsgate-idp-npm-ci.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if MODULES_STAMP.exists() and MODULES_STAMP.stat().st_mtime >= lock.stat().st_mtime:
            return
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=IDP_DIR, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise IdPUnavailable(f"tests/idp/node_modules (npm ci failed: {done.stderr.strip()[-500:]})")


class IdP:
    """One `node tests/idp/idp.js` process; `issuer` is `http://127.0.0.1:<port>`."""

    def __init__(self, users: Sequence[User], clients: Sequence[Client], options: dict[str, Any] | None = None) -> None:
        self.users = [dict(u) for u in users]
        self.clients = [dict(c) for c in clients]
        self.options = dict(options or {})
        self.dir = Path(tempfile.mkdtemp(prefix="wsgate-idp-"))
        self.config = self.dir / "idp.json"
        self.config.write_text(json.dumps({"users": self.users, "clients": self.clients, "options": self.options}))
        self.log_path = self.dir / "idp.log"
        self.port = 0
        self.issuer = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        users: Sequence[User],
        clients: Sequence[Client],
        port: int | None = None,
        *,
        options: dict[str, Any] | None = None,
    ) -> IdP:
        ensure_node_modules()
        idp = cls(users, clients, options)
        idp._launch(port)
        return idp

    def _launch(self, port: int | None) -> None:
        for _attempt in range(3):
            chosen = port or free_port()
            if self._spawn(chosen):
                return
            if port is not None:
                break
        raise RuntimeError(f"test IdP did not start:\n{self.logs()}")

    def _spawn(self, port: int) -> bool:
        """True once listening; False when the port was taken (exit code 3)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            self.proc = subprocess.Popen(
                ["node", str(IDP_DIR / "idp.js"), "--config", str(self.config), "--port", str(port)],
                cwd=IDP_DIR,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                piece = os.read(self.proc.stdout.fileno(), 4096)
                buf += piece
                for line in buf.splitlines():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict) and event.get("event") == "listening":
                            self.port, self.issuer = int(event["port"]), str(event["issuer"])
                            return True
                if not piece and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        code = self.proc.poll()
        self._kill()
        if code == 3:
            return False
        raise RuntimeError(f"test IdP did not start (exit {code}):\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, path: str) -> str:
        return self.issuer + path

    # --- runtime control --------------------------------------------------------------

    def update_user(self, login: str, **fields: Any) -> User:
        """Changes a user at runtime (groups, name, email, email_verified, picture, claims)."""
        req = urllib.request.Request(
            self.url(f"/_control/users/{login}"),
            data=json.dumps(fields).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            user: User = json.loads(resp.read())
        for u in self.users:  # keep restarts consistent with what the IdP knows
            if u["login"] == login:
                u.update(fields)
        self.config.write_text(json.dumps({"users": self.users, "clients": self.clients, "options": self.options}))
        return user

    def set_groups(self, login: str, groups: Sequence[str]) -> None:
        self.update_user(login, groups=list(groups))

    def restart(self) -> IdP:
        """Same port, users and clients, but a new signing key: a key rotation, as providers do."""
        port = self.port
        self._kill()
        self._launch(port)
        return self

    def stop(self) -> None:
        self._kill()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- driving the login form with an HTTP client ------------------------------------------

_FORM_ACTION = re.compile(r"<form[^>]*\baction=\"([^\"]+)\"", re.IGNORECASE)


async def sign_in_via_form(http: Any, url: str, login: str, stop_at: str, *, max_hops: int = 10) -> str:
    """Follows redirects from `url`, posts `login` into the IdP's form, and returns the first
    redirect whose target starts with `stop_at` (the client's redirect_uri), without following it.

    `http` is an `aiohttp.ClientSession` whose cookie jar accepts IP hosts
    (`aiohttp.CookieJar(unsafe=True)`), since the IdP's interaction cookies are set on 127.0.0.1.
    """
    method, data = "GET", None
    for _ in range(max_hops):
        async with http.request(method, url, data=data, allow_redirects=False) as resp:
            body = await resp.text()
            if resp.status in (301, 302, 303, 307, 308):
                target = urljoin(url, str(resp.headers["Location"]))
                if target.startswith(stop_at):
                    return target
                method, data, url = "GET", None, target
                continue
            if resp.status == 200 and (m := _FORM_ACTION.search(body)):
                method, data, url = "POST", {"login": login}, urljoin(url, html.unescape(m.group(1)))
                continue
            raise AssertionError(f"unexpected answer from the IdP at {url}: {resp.status} {body[:500]}")
    raise AssertionError(f"no redirect to {stop_at} after {max_hops} hops")
