"""The code stays lint-clean (ruff) and type-clean (mypy), with the settings in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    p = _run("ruff", "check", "kairosd", "bench", "tests")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_finds_nothing_in_the_package() -> None:
    p = _run("mypy")  # files and per-module settings: [tool.mypy] in pyproject.toml
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Success" in p.stdout
