"""`bottle build`: build bottle's images with BuildKit, or with Buildah on Podman.

Both take the build-time CA as a secret (`RUN --mount=type=secret`), which is never
stored in an image. Docker clients differ: a current `docker` needs the buildx plugin,
while clients before 23.0 have BuildKit built in behind `DOCKER_BUILDKIT=1`. We check
which one we have instead of assuming. `podman build` is Buildah.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import bottle
from bottle.backend.docker.cli import DockerCLI
from bottle.backend.docker.engine import DOCKER, Engine
from bottle.errors import BackendError, BottleError
from bottle.manifest import DEFAULT_AGENT_IMAGE, DEFAULT_PIPELOCK_IMAGE
from bottle.pipelock_source import (
    PIPELOCK_COMMIT,
    PIPELOCK_VERSION,
    PipelockSource,
    build_binary,
    default_cache_dir,
)
from bottle.plan import PROXY_IMAGE

# image name -> (Dockerfile, tag, base-image kind, real upstream base)
IMAGES = {
    "proxy": ("Dockerfile.egress-proxy", PROXY_IMAGE, "python", "python:3.13-slim"),
    "agent": ("Dockerfile.agent", DEFAULT_AGENT_IMAGE, "node", "node:22-bookworm-slim"),
}
# Built only from a verified source (--pipelock-source), under the pinned official name so
# that manifests using the default scanner image work on a host that cannot pull it.
PIPELOCK_IMAGE = DEFAULT_PIPELOCK_IMAGE
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def parse_base_images(values: Sequence[str]) -> dict[str, str]:
    kinds = {kind for _, _, kind, _ in IMAGES.values()}
    out = {}
    for value in values:
        kind, sep, image = value.partition("=")
        if not sep or kind not in kinds or not image or re.search(r"\s", image):
            raise BottleError(
                f"--base-image {value!r}: expected KIND=IMAGE with KIND one of {', '.join(sorted(kinds))}"
            )
        out[kind] = image
    return out


def source_root() -> Path:
    root = Path(bottle.__file__).resolve().parent.parent
    if not (root / "Dockerfile.egress-proxy").is_file():
        raise BottleError(
            "bottle build needs bottle's source tree (Dockerfiles), which this installation does not have",
            tip="run it from a clone: pip install -e . && bottle build",
        )
    return root


@contextlib.contextmanager
def build_context() -> Iterator[Path]:
    """The source tree when bottle runs from a clone; otherwise a temporary context made
    from the installed package and the Dockerfiles installed with it (share/bottle)."""
    root = Path(bottle.__file__).resolve().parent.parent
    if (root / "Dockerfile.egress-proxy").is_file():
        yield root
        return
    shared = Path(sys.prefix) / "share" / "bottle"
    if not (shared / "Dockerfile.egress-proxy").is_file():
        source_root()  # raises with a tip
    with tempfile.TemporaryDirectory(prefix="bottle-build-") as tmp:
        context = Path(tmp)
        shutil.copytree(shared, context, dirs_exist_ok=True)
        package = Path(bottle.__file__).resolve().parent
        (context / "bottle").mkdir()
        shutil.copy2(package / "__init__.py", context / "bottle" / "__init__.py")
        shutil.copytree(package / "mitm", context / "bottle" / "mitm",
                        ignore=shutil.ignore_patterns("__pycache__"))
        yield context


def buildkit_command(docker: DockerCLI) -> tuple[list[str], dict[str, str]]:
    """The build argv prefix and extra environment for a BuildKit build with this client."""
    if docker.ok(["buildx", "version"]):
        return ["buildx", "build", "--load"], {}
    version = docker.output(["version", "--format", "{{.Client.Version}}"], check=False)
    major = re.match(r"(\d+)\.", version)
    if major and int(major.group(1)) < 23:
        return ["build"], {"DOCKER_BUILDKIT": "1"}
    raise BackendError(
        f"{docker.executable} (client {version or 'unknown'}) has no buildx plugin, so it cannot run "
        "BuildKit builds",
        tip="install the docker-buildx plugin, or set BOTTLE_DOCKER to a client with BuildKit "
        "(e.g. /usr/bin/docker from Debian's docker.io package)",
    )


def check_request(only: str | None, pipelock_source: PipelockSource | None) -> None:
    if only == "pipelock" and pipelock_source is None:
        raise BottleError(
            "--only pipelock builds pipelock from source and needs --pipelock-source ARCHIVE_OR_DIR",
            tip=f"where the registry answers, `docker pull {PIPELOCK_IMAGE}` is all you need",
        )


def build_command(docker: DockerCLI, engine: Engine = DOCKER) -> tuple[list[str], dict[str, str]]:
    """The build argv prefix and extra environment for this engine."""
    if engine.name == "podman":
        # Buildah writes OCI images by default, and the OCI format has no HEALTHCHECK:
        # the docker format keeps pipelock's, which bottle start waits on.
        return ["build", "--format", "docker"], {}
    prefix, extra_env = buildkit_command(docker)
    return [*prefix, "--progress=plain"], extra_env


def build_images(
    base_images: Mapping[str, str],
    *,
    ca_cert: Path | None = None,
    only: str | None = None,
    no_cache: bool = False,
    docker: DockerCLI | None = None,
    engine: Engine = DOCKER,
    pipelock_source: PipelockSource | None = None,
    env: Mapping[str, str] | None = None,
    proxy_tag: str = PROXY_IMAGE,
) -> None:
    env = os.environ if env is None else env
    check_request(only, pipelock_source)
    docker = docker or DockerCLI()
    prefix, extra_env = build_command(docker, engine)
    with build_context() as root:
        _build(docker, root, prefix, extra_env, base_images, ca_cert=ca_cert, only=only, no_cache=no_cache,
               tags={"proxy": proxy_tag})
        if pipelock_source is not None and only in (None, "pipelock"):
            binary = build_binary(pipelock_source, cache_dir=default_cache_dir(env), env=env)
            _build_pipelock(docker, root, prefix, extra_env, binary, pipelock_source, no_cache=no_cache)


def _build_pipelock(docker, root, prefix, extra_env, binary: Path, source: PipelockSource, *, no_cache) -> None:
    with tempfile.TemporaryDirectory(prefix="bottle-pipelock-image-") as tmp:
        context = Path(tmp)
        shutil.copy2(binary, context / "pipelock")
        bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
        (context / "ca-certificates.crt").write_bytes(bundle)
        # OCI annotations (not bottle's own dev.bottle.* labels, which containers inherit).
        origin = f"source archive sha256 {source.sha256}" if source.sha256 else f"unverified directory {source.path}"
        argv = [*prefix, "--file", str(root / "Dockerfile.pipelock"), "--tag", PIPELOCK_IMAGE,
                "--label", f"org.opencontainers.image.version={PIPELOCK_VERSION}",
                "--label", f"org.opencontainers.image.revision={PIPELOCK_COMMIT}",
                "--label", f"org.opencontainers.image.description=pipelock built by bottle build from {origin}"]
        if no_cache:
            argv.append("--no-cache")
        _run_build(docker, [*argv, str(context)], extra_env, PIPELOCK_IMAGE, "Dockerfile.pipelock", "scratch")


def _build(docker, root, prefix, extra_env, base_images, *, ca_cert, only, no_cache, tags) -> None:
    for name, (dockerfile, tag, kind, default_base) in IMAGES.items():
        if only and name != only:
            continue
        tag = tags.get(name, tag)
        argv = [*prefix, "--file", str(root / dockerfile), "--tag", tag,
                "--build-arg", f"BASE_IMAGE={base_images.get(kind, default_base)}"]
        if ca_cert:
            argv += ["--secret", f"id=build_ca,src={ca_cert.resolve()}"]
        if no_cache:
            argv.append("--no-cache")
        argv.append(str(root))
        _run_build(docker, argv, extra_env, tag, dockerfile, base_images.get(kind, default_base))


def _run_build(docker, argv: list[str], extra_env, tag: str, dockerfile: str, base: str) -> None:
    print(f"bottle: building {tag} from {dockerfile} (base {base})", file=sys.stderr)
    full = docker.argv(argv)
    result = subprocess.run(full, env={**os.environ, **extra_env}, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise BackendError(
            f"building {tag} failed (exit code {result.returncode}): `{shlex.join(full)}`",
            tip="behind a TLS-inspecting proxy, pass --ca-cert with its CA bundle",
        )
    print(f"bottle: built {tag}", file=sys.stderr)
