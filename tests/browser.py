"""Headless Chromium for end-to-end tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright never downloads a browser here (`executable_path` points at the system
one). The flags keep Chromium off the network: on this machine's closed network
its background requests are refused by the dozen and slow every start.

Sync tests (Playwright's sync API refuses to run inside an event loop)::

    from browser import launch_chromium, require_chromium
    require_chromium()
    with launch_chromium() as browser:
        page = browser.new_context(ignore_https_errors=True).new_page()
        page.goto(url)

Async tests: `async with launch_chromium_async() as browser:` with the same calls awaited.
Each `new_context()` is a separate cookie jar, i.e. a separate person.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser as AsyncBrowser
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_available() -> bool:
    """Chromium is installed and Playwright's Python package is importable."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """`require(chromium_available(), ...)`: skips locally, fails in CI (CI=true).

    The same rule as `require` in tests/conftest.py, which test modules cannot import
    reliably (every conftest.py is imported as the module `conftest`).
    """
    if chromium_available():
        return
    what = "chromium at /usr/bin/chromium and the playwright package (apt-get install chromium, pip install playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"missing in CI: {what}")
    pytest.skip(f"missing: {what}")


@contextlib.contextmanager
def launch_chromium(*, extra_args: tuple[str, ...] = (), timeout_ms: float = 30_000) -> Iterator[Browser]:
    """A headless Chromium (Playwright sync API), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args], timeout=timeout_ms
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.asynccontextmanager
async def launch_chromium_async(
    *, extra_args: tuple[str, ...] = (), timeout_ms: float = 30_000
) -> AsyncIterator[AsyncBrowser]:
    """The same for async tests (Playwright async API)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args], timeout=timeout_ms
        )
        try:
            yield browser
        finally:
            await browser.close()
