from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bottle import workspace
from bottle.plan import WorkspaceOwner

REAL_OWNER_OF = workspace.owner_of


@pytest.fixture(autouse=True)
def workspaces_owned_by_a_user(monkeypatch):
    """Who owns the checkout differs between machines (root in CI containers), and the agent's
    user follows the workspace's owner: unit tests see every workspace owned by 1000:1000.
    Tests of the ownership rules set `bottle.workspace.owner_of` back to REAL_OWNER_OF."""
    monkeypatch.setattr(workspace, "owner_of", lambda path: WorkspaceOwner(uid=1000, gid=1000, mode=0o755))


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write a manifest (dedented) and return its path."""

    def write(text: str, name: str = "bottle.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


MINIMAL = """
version: 1
name: demo
egress:
  allow:
    - host: api.example.com
"""
