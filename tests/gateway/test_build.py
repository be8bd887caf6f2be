"""The compiled hot path: built by `make install`, and never run stale from a source checkout."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gateway
from gateway import HOT_PATH, hot_path_compiled

ROOT = Path(gateway.__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _source(root: Path, name: str) -> Path:
    return root.joinpath(*name.split(".")).with_suffix(".py")


def _built(root: Path, name: str) -> Path:
    source = _source(root, name)
    return source.with_name(source.stem + SUFFIX)


def _checkout_with_unloadable_build(tmp_path: Path) -> None:
    """A copy of the packages as a source checkout, each hot-path module "built" one day after its
    source was written (the built files are not even ELF files: loading one fails loudly)."""
    for package in ("gateway", "auth", "routing", "certs", "launcher"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (tmp_path / ".git").mkdir()
    written = time.time() - 2 * 86400
    for path in tmp_path.rglob("*.py"):
        os.utime(path, (written, written))
    for name in HOT_PATH:
        _built(tmp_path, name).write_bytes(b"not a shared object")
        os.utime(_built(tmp_path, name), (written + 86400, written + 86400))


def _python(tmp_path: Path, program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )


def test_every_hot_path_module_runs_compiled_after_install() -> None:
    if not any(_built(ROOT, name).exists() for name in HOT_PATH) and os.environ.get("CI") != "true":
        pytest.skip("the hot path was not compiled here (no C compiler at install)")
    assert hot_path_compiled()
    for name in HOT_PATH:
        assert str(importlib.import_module(name).__file__).endswith(SUFFIX), name


@pytest.mark.parametrize("first", ["gateway.proxy", "gateway.http1", "gateway"])
def test_one_edited_module_makes_the_whole_hot_path_run_from_source(tmp_path: Path, first: str) -> None:
    """None of the built modules is used (one would fail to load), whichever module is imported first."""
    _checkout_with_unloadable_build(tmp_path)
    (tmp_path / "gateway" / "metrics.py").touch()  # edited after the build
    program = f"import importlib, {first}\nfor n in {HOT_PATH!r}: print(importlib.import_module(n).__file__)"
    run = _python(tmp_path, program)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(_source(tmp_path, name)) for name in HOT_PATH]
    assert "compiled hot path is older than its source" in run.stderr


def test_an_up_to_date_build_is_not_turned_away(tmp_path: Path) -> None:
    """With no source newer than its build, the built modules are what Python loads (and these fail)."""
    _checkout_with_unloadable_build(tmp_path)
    run = _python(tmp_path, "import gateway.proxy")
    assert run.returncode != 0
    assert "ImportError" in run.stderr and SUFFIX in run.stderr
    assert "older than its source" not in run.stderr


def test_the_build_and_the_stale_check_name_the_same_modules() -> None:
    """setup.py compiles, the Makefile rebuilds on changes to, and gateway/__init__.py checks the same list."""
    expected = {str(_source(Path(), name)) for name in HOT_PATH}
    setup = (ROOT / "setup.py").read_text()
    listed = setup[setup.index("HOT_PATH = [") : setup.index("]", setup.index("HOT_PATH = ["))]
    assert set(re.findall(r'"([\w/]+\.py)"', listed)) == expected
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^HOT_PATH := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert rule is not None
    assert set(rule.group(1).replace("\\\n", " ").split()) == expected
