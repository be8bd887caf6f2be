"""Bearer tokens answered from the worker's cache: never past the token's expiry, and the store's
`last_used` still written while the token is in use."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import auth.revocation
import auth.service
import auth.tokens
from auth.service import AuthService
from gateway.config import load_config
from gateway.wiring import build_auth


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AuthService]:
    conf = tmp_path / "wsgate.toml"
    conf.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    svc = build_auth(load_config(conf), warn=False)
    try:
        yield svc
    finally:
        await svc.close()


class Clock:
    """Time as the cache, the token store and the service see it, moved on by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        monkeypatch.setattr(auth.revocation, "time", self)
        monkeypatch.setattr(auth.tokens, "now", self.time)
        monkeypatch.setattr(auth.service, "now", self.time)

    def time(self) -> float:
        return time.time() + self.offset


async def test_a_cached_token_is_refused_once_it_expires(service: AuthService, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    token, _ = await service.tokens.create("dev:alice", "ide", ["workspace"], 60)
    clock.offset = 10.0  # first used later: its next `last_used` write would be due after it expires
    found = await service.bearer(token, "workspace")
    assert found is not None and found[1].identity == "dev:alice"
    assert await service.bearer(token, "api") is None  # the scope is checked on every use, cached or not
    clock.offset = 59.0
    assert await service.bearer(token, "workspace") is not None
    clock.offset = 60.5
    assert await service.bearer(token, "workspace") is None


async def test_a_token_in_use_still_has_its_last_use_written(
    service: AuthService, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    token, _ = await service.tokens.create("dev:alice", "ide", ["workspace"], 3600)
    assert await service.bearer(token, "workspace") is not None
    first = (await service.tokens.list("dev:alice"))[0].last_used
    assert first > 0
    for step in (10.0, 30.0, 59.0):  # answered from the cache: the store is not written each time
        clock.offset = step
        assert await service.bearer(token, "workspace") is not None
    assert (await service.tokens.list("dev:alice"))[0].last_used == first
    clock.offset = 61.0
    assert await service.bearer(token, "workspace") is not None
    assert (await service.tokens.list("dev:alice"))[0].last_used >= first + 60


async def test_a_token_revoked_in_the_store_is_refused_after_the_epoch_moves(service: AuthService) -> None:
    token, info = await service.tokens.create("dev:alice", "ide", ["workspace"], 3600)
    assert await service.bearer(token, "workspace") is not None
    assert await service.tokens.revoke(info.id)
    await service.revoked()  # what the API and the revocation poll do
    assert await service.bearer(token, "workspace") is None
