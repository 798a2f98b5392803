"""Building pipelock from source: only a verified archive is built, and a tampered one is refused."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bottle import pipelock_source as ps
from bottle.cli import cli
from bottle.errors import BuildError


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


SOURCE = {"pipelock-2.3.0/go.mod": b"module github.com/luckyPipewrench/pipelock\n",
          "pipelock-2.3.0/cmd/pipelock/main.go": b"package main\nfunc main() {}\n"}


def test_a_tampered_archive_is_refused_before_anything_is_built(tmp_path):
    archive = make_archive(tmp_path / "pipelock-2.3.0.tar.gz", SOURCE)
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(BuildError) as info:
        ps.resolve_source(archive)
    assert info.value.message == (
        f"pipelock source archive {archive} has sha256 {actual}, expected {ps.PIPELOCK_SOURCE_SHA256} "
        "(pipelock v2.3.0); refusing to build a scanner from unverified source\n"
        "Tip: use the unmodified archive, or pass --pipelock-sha256 with the hash of the one you trust"
    )
    assert info.value.exit_code == 7


def test_bottle_build_refuses_a_tampered_archive_with_a_clear_error_and_no_traceback(tmp_path):
    archive = make_archive(tmp_path / "pipelock.tar.gz", SOURCE)
    result = CliRunner().invoke(cli, ["build", "--only", "pipelock", "--pipelock-source", str(archive)])
    assert result.exit_code == 7
    assert "has sha256" in result.output and "refusing to build a scanner from unverified source" in result.output
    assert "Traceback" not in result.output


def test_an_archive_with_the_expected_hash_is_accepted(tmp_path):
    archive = make_archive(tmp_path / "p.tar.gz", SOURCE)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    source = ps.resolve_source(archive, expected_sha256=digest.upper())
    assert (source.path, source.sha256) == (archive.resolve(), digest)


def test_a_directory_without_pipelock_sources_is_refused(tmp_path):
    with pytest.raises(BuildError) as info:
        ps.resolve_source(tmp_path)
    assert info.value.message == f"{tmp_path} is not a pipelock source directory (no go.mod and cmd/pipelock/)"


def test_the_binary_is_reused_from_the_cache_by_the_archives_hash(tmp_path):
    cached = tmp_path / "cache" / ("ab" * 32) / "pipelock"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"#!/bin/sh\n")
    cached.chmod(0o755)
    # No Go on PATH: a cache hit must not need it.
    got = ps.build_binary(ps.PipelockSource(tmp_path, "ab" * 32), cache_dir=tmp_path / "cache", env={"PATH": ""})
    assert got == cached


def test_without_go_the_build_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(ps.os, "access", lambda *a: False)
    with pytest.raises(BuildError) as info:
        ps.build_binary(ps.PipelockSource(tmp_path, "cd" * 32), cache_dir=tmp_path / "cache", env={"PATH": ""})
    assert info.value.message.startswith("building pipelock from source needs Go on PATH")


def test_an_archive_that_escapes_its_directory_is_refused(tmp_path):
    archive = make_archive(tmp_path / "evil.tar.gz", {**SOURCE, "../escape": b"x"})
    with pytest.raises(BuildError) as info:
        ps._extract(archive, tmp_path / "out")
    assert "cannot unpack pipelock source" in info.value.message
    assert not (tmp_path / "escape").exists()


def test_only_pipelock_without_a_source_is_a_usage_error():
    result = CliRunner().invoke(cli, ["build", "--only", "pipelock"])
    assert result.exit_code == 1
    assert "--only pipelock builds pipelock from source and needs --pipelock-source ARCHIVE_OR_DIR" in result.output
