"""Which engine the docker-compatible client drives, and whether a bottle can run on it.

Docker and Podman take nearly the same commands, but not the same isolation options
(docs/prds/0007-podman.md). The plan is made for one engine by name; this module finds
that name: `--engine` (or `$BOTTLE_ENGINE`) when given, otherwise the answer of the
client's own `version`. The client is `$BOTTLE_DOCKER` when set, otherwise the engine's
command on PATH (`docker`, or `podman` on a host without `docker`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Mapping

from bottle.backend.docker.cli import DockerCLI
from bottle.errors import BackendError, NotSupportedError

ENGINES = ("docker", "podman")
ENGINE_ENV = "BOTTLE_ENGINE"
# The oldest Podman whose netavark makes an internal network without a gateway
# (`--internal --disable-dns`); 4.3.1 (Debian bookworm) is the version CI proves.
PODMAN_MIN = (4, 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Engine:
    """What the client talks to. `rootless`, `cgroup_version` and `network_backend` are
    only known for Podman (its `info`); Docker keeps the defaults."""

    name: str  # docker | podman
    version: str = ""
    rootless: bool = False
    cgroup_version: str = ""
    network_backend: str = ""

    @property
    def title(self) -> str:
        return "Podman" if self.name == "podman" else "Docker"

    def __str__(self) -> str:
        return f"{self.title} {self.version}".strip() + (" (rootless)" if self.rootless else "")


DOCKER = Engine(name="docker")


def requested_engine(option: str | None, env: Mapping[str, str]) -> str | None:
    """The engine asked for with `--engine`, else `$BOTTLE_ENGINE`, else None (detect)."""
    name = option or env.get(ENGINE_ENV) or None
    if name is not None and name not in ENGINES:
        raise BackendError(f"{ENGINE_ENV}={name!r}: expected one of {', '.join(ENGINES)}")
    return name


def client_for(requested: str | None, env: Mapping[str, str]) -> DockerCLI:
    if env.get("BOTTLE_DOCKER"):
        return DockerCLI(env["BOTTLE_DOCKER"], env=env)
    if requested:
        return DockerCLI(requested, env=env)
    # A host with only Podman (Fedora, RHEL) works without any setting.
    if shutil.which("docker") is None and shutil.which("podman") is not None:
        return DockerCLI("podman", env=env)
    return DockerCLI("docker", env=env)


def classify(version_json: str) -> tuple[str, str] | None:
    """(engine, version) from `CLIENT version --format '{{json .}}'`, or None if unknown.

    Docker reports its server's components (one named "Engine"); Podman reports a client
    without a platform, and for a remote Podman a server with the same shape. A Docker
    client talking to Podman's Docker-compatible API is "docker-api-on-podman"."""
    try:
        document = json.loads(version_json)
    except json.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("Client"), dict):
        return None
    client, server = document["Client"], document.get("Server") or {}
    components = [c.get("Name") for c in server.get("Components") or [] if isinstance(c, dict)]
    if "Podman Engine" in components and "Platform" in client:
        return "docker-api-on-podman", str(server.get("Version") or "")
    if "Engine" in components or "Platform" in client:
        return "docker", str(server.get("Version") or client.get("Version") or "")
    if "OsArch" in client or "APIVersion" in client:
        return "podman", str(server.get("Version") or client.get("Version") or "")
    return None


def detect_engine(docker: DockerCLI) -> Engine:
    result = docker.run(["version", "--format", "{{json .}}"], check=False, timeout=60)
    found = classify(result.stdout.decode(errors="replace").strip())
    if found is None:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise BackendError(
            f"cannot tell which engine {docker.executable} drives: `version` said\n    "
            + (detail.replace("\n", "\n    ") or "(nothing)"),
            tip="pass --engine docker or --engine podman, and make sure the engine is running",
        )
    name, version = found
    if name == "docker-api-on-podman":
        raise NotSupportedError(
            f"{docker.executable} is a Docker client talking to Podman {version} through its "
            "Docker-compatible API, which takes Docker's isolation options only in part",
            tip="drive Podman with its own client: --engine podman, or BOTTLE_DOCKER=/path/to/podman",
        )
    if name == "docker":
        if result.returncode != 0:
            raise BackendError(
                f"no Docker engine answers {docker.executable}: "
                + result.stderr.decode(errors="replace").strip(),
                tip="start the Docker engine, or choose another with --engine / BOTTLE_DOCKER",
            )
        return Engine(name="docker", version=version)
    info = engine_info(docker)
    host = info.get("host") or {}
    return Engine(
        name="podman",
        version=str((info.get("version") or {}).get("Version") or version),
        rootless=bool((host.get("security") or {}).get("rootless")),
        cgroup_version=str(host.get("cgroupVersion") or ""),
        network_backend=str(host.get("networkBackend") or ""),
    )


def engine_info(docker: DockerCLI) -> dict:
    """`info` as the engine answers it (Docker's and Podman's shapes differ)."""
    text = docker.output(["info", "--format", "{{json .}}"], timeout=60)
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise BackendError(f"`{docker.executable} info` did not answer a JSON object:\n    {text[:500]}")
    return info


def resolve_engine(option: str | None, env: Mapping[str, str]) -> tuple[DockerCLI, Engine]:
    """The client and the engine it drives, checked against what was asked for."""
    requested = requested_engine(option, env)
    docker = client_for(requested, env)
    engine = detect_engine(docker)
    if requested and engine.name != requested:
        raise BackendError(
            f"{docker.executable} drives {engine}, but the engine asked for is {requested}",
            tip=f"unset BOTTLE_DOCKER, or point it at a {requested} client",
        )
    return docker, engine


def plan_engine(option: str | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The engine a dry-run plans for, touching no container or network: the one asked
    for, else the client's answer to `version`. The second value is a note for the
    reader: Docker was assumed because no client answered, or start would refuse it."""
    requested = requested_engine(option, env)
    if requested:
        return requested, None
    try:
        found = resolve_engine(None, env)[1]
    except NotSupportedError as e:
        return "docker", f"bottle start would refuse this engine: {e.message}"
    except BackendError:
        return "docker", "no engine answered, so this plan assumes Docker; pass --engine to choose"
    try:
        require_supported(found)
    except NotSupportedError as e:
        return found.name, f"bottle start would refuse this engine: {e.message}"
    return found.name, None


def require_supported(engine: Engine) -> None:
    """Refuse an engine on which a bottle would be weaker than the plan says."""
    if engine.name != "podman":
        return
    numbers = tuple(int(n) for n in re.findall(r"\d+", engine.version)[:2])
    if numbers and numbers < PODMAN_MIN:
        raise NotSupportedError(
            f"{engine} is too old: bottle needs Podman {'.'.join(map(str, PODMAN_MIN))} or newer "
            "with netavark, which makes internal networks without a gateway on the host",
            tip="upgrade Podman, or use Docker (--engine docker)",
        )
    if engine.network_backend != "netavark":
        raise NotSupportedError(
            f"{engine} uses the {engine.network_backend or 'unknown'} network backend; bottle's isolation "
            "on Podman is proven with netavark only",
            tip="install netavark and aardvark-dns and switch to them (podman system reset), or use Docker",
        )
    if engine.rootless:
        why = (
            "on cgroup v1 rootless Podman ignores the CPU, memory and process limits"
            if engine.cgroup_version == "v1"
            else "its networking (slirp4netns or pasta) has not been proven to keep the host out of reach"
        )
        raise NotSupportedError(
            f"rootless Podman cannot run a bottle yet: {why}, and bottle does not start a weaker bottle",
            tip="run bottle as root with rootful Podman (sudo bottle start ...), or use Docker",
        )
