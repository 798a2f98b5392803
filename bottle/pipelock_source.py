"""Build pipelock from its source with the host's Go, for hosts that cannot pull its image.

Real users pull the pinned official image. Air-gapped hosts (and our CI machines) can
reach a Go module proxy but no container registry: for them `bottle build
--pipelock-source ARCHIVE_OR_DIR` verifies the source archive against the sha256 pinned
here, compiles a static binary the way pipelock's own release Dockerfile does, and
caches it by that hash. The image is then made `FROM scratch` (Dockerfile.pipelock), the
same layout as the official one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bottle.errors import BuildError

PIPELOCK_VERSION = "2.3.0"
PIPELOCK_COMMIT = "7a3b7de4a5552b4e756eb930256468b7cbd616b1"
# sha256 of `git archive --prefix=pipelock-2.3.0/` of the v2.3.0 commit, gzipped.
PIPELOCK_SOURCE_SHA256 = "8ac6694c56c3d1c5a134c0dac3a59b258ba8ea2e6d82bd177016bfbefed433a3"
GO_BUILD_TIMEOUT = 900
_MODULE = "github.com/luckyPipewrench/pipelock"


@dataclass(frozen=True)
class PipelockSource:
    """A pipelock source tree to build: an archive (verified) or a directory (as is)."""

    path: Path
    sha256: str | None  # of the archive; None for a directory

    @property
    def cache_key(self) -> str | None:
        return self.sha256


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_source(path: Path, *, expected_sha256: str = PIPELOCK_SOURCE_SHA256) -> PipelockSource:
    """Check that `path` is a source archive with the expected sha256, or a source directory."""
    if path.is_dir():
        if not (path / "cmd" / "pipelock").is_dir() or not (path / "go.mod").is_file():
            raise BuildError(
                f"{path} is not a pipelock source directory (no go.mod and cmd/pipelock/)"
            )
        return PipelockSource(path.resolve(), None)
    if not path.is_file():
        raise BuildError(f"pipelock source {path} does not exist")
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise BuildError(
            f"pipelock source archive {path} has sha256 {actual}, expected {expected_sha256.lower()} "
            f"(pipelock v{PIPELOCK_VERSION}); refusing to build a scanner from unverified source",
            tip="use the unmodified archive, or pass --pipelock-sha256 with the hash of the one you trust",
        )
    return PipelockSource(path.resolve(), actual)


def find_go(env: Mapping[str, str]) -> str:
    found = shutil.which("go", path=env.get("PATH")) or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )
    if found is None:
        raise BuildError(
            "building pipelock from source needs Go on PATH (1.25 or later)",
            tip="install Go, or provide a pipelock image some other way (docker load, a registry mirror)",
        )
    return found


def default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bottle" / "pipelock"


def build_binary(source: PipelockSource, *, cache_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """A static linux/amd64 pipelock binary built from `source`; cached by the archive's hash."""
    env = os.environ if env is None else env
    if source.cache_key is not None:
        cached = cache_dir / source.cache_key / "pipelock"
        if cached.is_file() and os.access(cached, os.X_OK):
            print(f"bottle: using cached pipelock binary {cached}", file=sys.stderr)
            return cached
    go = find_go(env)
    with tempfile.TemporaryDirectory(prefix="bottle-pipelock-") as tmp:
        tree = source.path if source.sha256 is None else _extract(source.path, Path(tmp))
        out = Path(tmp) / "pipelock.out"
        _go_build(go, tree, out, env)
        if source.cache_key is None:
            target = cache_dir / "unverified" / "pipelock"
        else:
            target = cache_dir / source.cache_key / "pipelock"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".pipelock.{os.getpid()}")
        shutil.copyfile(out, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    return target


def _extract(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers() if m.name not in ("", ".")}
            # "data" refuses absolute paths, .. and links that leave the tree.
            tar.extractall(into / "src", filter="data")
    except (tarfile.TarError, OSError) as e:
        raise BuildError(f"cannot unpack pipelock source {archive}: {e}") from None
    root = into / "src"
    if len(tops) == 1 and (root / next(iter(tops))).is_dir():
        root = root / next(iter(tops))
    if not (root / "cmd" / "pipelock").is_dir():
        raise BuildError(f"{archive} holds no cmd/pipelock/ (not a pipelock source archive)")
    return root


def _go_build(go: str, tree: Path, out: Path, env: Mapping[str, str]) -> None:
    # As pipelock's release Dockerfile builds it: static, stripped, version stamped.
    go_version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                                env=dict(env), check=False).stdout.strip() or "unknown"
    x = {
        f"{_MODULE}/internal/cliutil.Version": PIPELOCK_VERSION,
        f"{_MODULE}/internal/cliutil.GoVersion": go_version,
        f"{_MODULE}/internal/cliutil.GitCommit": PIPELOCK_COMMIT,
        f"{_MODULE}/internal/proxy.Version": PIPELOCK_VERSION,
    }
    ldflags = " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in x.items())])
    argv = [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(out), "./cmd/pipelock"]
    child_env = {**env, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"}
    print(f"bottle: building pipelock v{PIPELOCK_VERSION} from source with {go} "
          "(dependencies from the Go module proxy; about a minute)", file=sys.stderr)
    try:
        result = subprocess.run(argv, cwd=tree, env=child_env, capture_output=True,
                                timeout=GO_BUILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise BuildError(f"go build of pipelock did not finish within {GO_BUILD_TIMEOUT} s") from None
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join(result.stderr.decode(errors="replace").strip().splitlines()[-15:])
        raise BuildError(
            f"go build of pipelock failed (exit code {result.returncode}):\n{_indent(tail)}",
            tip="the build fetches pipelock's dependencies through GOPROXY; check `go env GOPROXY`",
        )


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (no output)"
