"""tests/auth: lets test modules import the fake providers beside them (github_api, bitbucket_api)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idp_process import IdP, IdPUnavailable

# --- the real OIDC identity provider (tests/idp, see tests/idp_process.py) -----------------


@pytest.fixture
def idp_factory() -> Iterator[Callable[..., IdP]]:
    """`idp_factory(users, clients, port=None, options=None)` starts a real OIDC IdP process.

    Without Node.js or installable node modules: skipped locally, failed in CI (as `require` does).
    """
    started: list[IdP] = []

    def make(
        users: Sequence[dict[str, Any]],
        clients: Sequence[dict[str, Any]],
        port: int | None = None,
        *,
        options: dict[str, Any] | None = None,
    ) -> IdP:
        try:
            idp = IdP.start(users, clients, port, options=options)
        except IdPUnavailable as e:
            if os.environ.get("CI") == "true":
                pytest.fail(f"missing in CI: {e}")
            pytest.skip(f"missing: {e}")
        started.append(idp)
        return idp

    yield make
    for idp in started:
        idp.stop()
