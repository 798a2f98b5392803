from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


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
