"""How tests treat missing prerequisites: fail under CI=true, skip locally, and report
pipelock as BLOCKED when scripts/test proved the registries refuse it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"test prerequisite missing: {reason}")
    pytest.skip(reason)


def pipelock_blocked() -> None:
    blocked = os.environ.get("BOTTLE_TEST_PIPELOCK_BLOCKED")
    if blocked:
        pytest.skip(f"BLOCKED (outside our reach): {blocked}")


def pipelock_binary() -> str:
    found = os.environ.get("BOTTLE_PIPELOCK_BIN") or shutil.which("pipelock")
    if found and Path(found).exists():
        return found
    pipelock_blocked()
    missing("pipelock binary not found (set BOTTLE_PIPELOCK_BIN or put pipelock on PATH)")
    raise AssertionError("unreachable")
