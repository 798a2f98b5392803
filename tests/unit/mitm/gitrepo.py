"""Real git repositories and the packs real `git pack-objects` makes from them, as
`git push` does (a thin pack with offset deltas), for the push-scan unit tests; and a
stand-in for pipelock's dlp scan that answers in pipelock's shape for its AWS patterns."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bottle.mitm.pack import NullSink, PackObject, PackWalker
from bottle.mitm.scanner import ScannerUnavailable, ScanResult

AWS_PAIR = ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
AWS_ID = "AKIAIOSFODNN7EXAMPLE"


class Repo:
    def __init__(self, path: Path) -> None:
        if shutil.which("git") is None:
            pytest.fail("git is not installed (the push-scan tests need the real git)")
        self.path = path
        self.env = {"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@test", "GIT_COMMITTER_NAME": "agent",
                    "GIT_COMMITTER_EMAIL": "agent@test", "HOME": str(path), "GIT_CONFIG_NOSYSTEM": "1"}
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, input: bytes | None = None) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], input=input, check=True, capture_output=True,
                              env=self.env).stdout.decode()

    def write(self, name: str, content: str | bytes) -> None:
        file = self.path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content.encode() if isinstance(content, str) else content)

    def commit(self, message: str = "change", **files: str | bytes) -> str:
        for name, content in files.items():
            self.write(name.replace("__", "/"), content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def pack(self, new: str, old: str | None = None, thin: bool = True) -> bytes:
        """What `git push` sends for old..new: `pack-objects --revs --thin --delta-base-offset`."""
        revs = f"{new}\n" + (f"^{old}\n" if old else "")
        flags = ["--thin"] if thin else []
        return subprocess.run(["git", "-C", str(self.path), "pack-objects", "--stdout", "--revs", "--delta-base-offset",
                               "-q", *flags], input=revs.encode(), check=True, capture_output=True).stdout


def seed_lines(count: int = 300) -> str:
    """A file long enough that git stores a changed version as a delta."""
    return "".join(f"config line {i}: value {i * 7919 % 1000}\n" for i in range(count))


def object_kinds(data: bytes) -> list[int]:
    kinds: list[int] = []

    class Sink(NullSink):
        def begin(self, obj: PackObject) -> None:
            kinds.append(obj.kind)

    PackWalker(Sink()).feed(data)
    return kinds


_PATTERNS = {
    "DLP-AWS Access ID": re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}"),
    "DLP-AWS Secret Key": re.compile(r"aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+]{40}", re.I),
}


class PatternScanner:
    """pipelock's dlp kind for its two AWS patterns, in its answer's shape; records what it was asked."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.texts: list[str] = []

    async def scan_text(self, text: str) -> ScanResult:
        self.texts.append(text)
        if self.error:
            raise self.error
        found = tuple((rule, f"Secret-like token detected ({rule[4:]})") for rule, p in _PATTERNS.items()
                      if p.search(text))
        return ScanResult("deny", found) if found else ScanResult("allow")

    async def scan_url(self, url: str) -> ScanResult:
        return ScanResult("allow")


UNAVAILABLE = ScannerUnavailable("scanner did not answer within 10s")
