"""How tests treat missing prerequisites: fail under CI=true, skip locally with how to
provide them."""

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


def pipelock_binary() -> str:
    found = os.environ.get("BOTTLE_PIPELOCK_BIN") or shutil.which("pipelock")
    if found and Path(found).exists():
        return found
    missing("pipelock binary not found: run scripts/test (it pulls pipelock or builds it from "
            "../shared/third_party or $BOTTLE_PIPELOCK_SOURCE), or set BOTTLE_PIPELOCK_BIN")
    raise AssertionError("unreachable")
