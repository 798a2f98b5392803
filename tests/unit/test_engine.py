"""Which engine bottle drives, and when it refuses one: real subprocesses, fake clients."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bottle.backend.docker import engine as engines
from bottle.backend.docker.engine import Engine
from bottle.errors import BackendError, NotSupportedError

DOCKER_VERSION = {
    "Client": {"Platform": {"Name": ""}, "Version": "28.2.2", "ApiVersion": "1.41"},
    "Server": {"Platform": {"Name": ""}, "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}],
               "Version": "20.10.24+dfsg1"},
}
PODMAN_VERSION = {"Client": {"APIVersion": "4.3.1", "Version": "4.3.1", "OsArch": "linux/amd64", "Os": "linux"}}
PODMAN_INFO = {"host": {"security": {"rootless": False}, "cgroupVersion": "v1", "networkBackend": "netavark"},
               "version": {"Version": "4.3.1"}}


def fake_client(tmp_path: Path, name: str, version: dict | str, info: dict | None = None, rc: int = 0) -> str:
    """An executable that answers `version` and `info` like an engine's client."""
    path = tmp_path / name
    answers = {"version": version if isinstance(version, str) else json.dumps(version),
               "info": json.dumps(info or {})}
    path.write_text(
        "#!/bin/sh\n"
        f'case "$1" in\n'
        f"  version) echo '{answers['version']}'; exit {rc} ;;\n"
        f"  info) echo '{answers['info']}' ;;\n"
        "esac\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (DOCKER_VERSION, ("docker", "20.10.24+dfsg1")),
        (PODMAN_VERSION, ("podman", "4.3.1")),
        ({"Client": {"APIVersion": "5.4.0", "Version": "5.4.0", "OsArch": "darwin/arm64"},
          "Server": {"APIVersion": "5.4.0", "Version": "5.4.2"}}, ("podman", "5.4.2")),
        ({"Client": {"Version": "1"}}, None),
        ([], None),
    ],
)
def test_the_engine_is_told_by_its_version_document(document, expected):
    assert engines.classify(json.dumps(document)) == expected


def test_a_docker_client_on_podmans_socket_is_refused(tmp_path):
    version = {**DOCKER_VERSION, "Server": {"Components": [{"Name": "Podman Engine", "Version": "4.3.1"},
                                                           {"Name": "Engine", "Version": "4.3.1"}],
                                            "Version": "4.3.1"}}
    client = fake_client(tmp_path, "docker", version)
    with pytest.raises(NotSupportedError) as info:
        engines.resolve_engine(None, {"BOTTLE_DOCKER": client})
    assert info.value.message == (
        f"{client} is a Docker client talking to Podman 4.3.1 through its Docker-compatible API, which takes "
        "Docker's isolation options only in part\n"
        "Tip: drive Podman with its own client: --engine podman, or BOTTLE_DOCKER=/path/to/podman"
    )


def test_garbage_is_no_engine():
    assert engines.classify("Usage: docker [OPTIONS]") is None


def test_a_client_that_is_podman_is_detected_with_its_info(tmp_path):
    client = fake_client(tmp_path, "docker", PODMAN_VERSION, PODMAN_INFO)  # podman-docker's shim
    docker, found = engines.resolve_engine(None, {"BOTTLE_DOCKER": client})
    assert docker.executable == client
    assert found == Engine(name="podman", version="4.3.1", rootless=False, cgroup_version="v1",
                           network_backend="netavark")
    assert str(found) == "Podman 4.3.1"


def test_a_podman_whose_info_is_not_json_is_an_error_not_a_traceback(tmp_path):
    client = fake_client(tmp_path, "podman", PODMAN_VERSION)
    client_path = Path(client)
    client_path.write_text(client_path.read_text().replace("echo '{}'", "echo 'Error: no'"))
    with pytest.raises(BackendError) as info:
        engines.resolve_engine(None, {"BOTTLE_DOCKER": client})
    assert info.value.message == f"`{client} info` did not answer a JSON object:\n    Error: no"


def test_a_docker_client_is_docker(tmp_path):
    client = fake_client(tmp_path, "docker", DOCKER_VERSION)
    assert engines.resolve_engine("docker", {"BOTTLE_DOCKER": client})[1] == Engine(name="docker",
                                                                                   version="20.10.24+dfsg1")


def test_asking_for_podman_with_a_docker_client_is_refused(tmp_path):
    client = fake_client(tmp_path, "docker", DOCKER_VERSION)
    with pytest.raises(BackendError) as info:
        engines.resolve_engine("podman", {"BOTTLE_DOCKER": client})
    assert info.value.message == (
        f"{client} drives Docker 20.10.24+dfsg1, but the engine asked for is podman\n"
        "Tip: unset BOTTLE_DOCKER, or point it at a podman client"
    )


def test_a_docker_client_without_an_engine_says_so(tmp_path):
    client = fake_client(tmp_path, "docker", DOCKER_VERSION, rc=1)
    with pytest.raises(BackendError, match="no Docker engine answers"):
        engines.resolve_engine(None, {"BOTTLE_DOCKER": client})


def test_an_unknown_client_is_refused_with_a_tip(tmp_path):
    client = fake_client(tmp_path, "nerdctl", "Usage: nerdctl")
    with pytest.raises(BackendError) as info:
        engines.resolve_engine(None, {"BOTTLE_DOCKER": client})
    assert info.value.message == (
        f"cannot tell which engine {client} drives: `version` said\n    Usage: nerdctl\n"
        "Tip: pass --engine docker or --engine podman, and make sure the engine is running"
    )


def test_an_unknown_engine_name_is_refused():
    with pytest.raises(BackendError) as info:
        engines.requested_engine(None, {"BOTTLE_ENGINE": "containerd"})
    assert info.value.message == "BOTTLE_ENGINE='containerd': expected one of docker, podman"


def test_a_dry_run_plans_for_the_engine_asked_for_without_running_anything():
    assert engines.plan_engine("podman", {"BOTTLE_DOCKER": "/nonexistent/docker"}) == ("podman", None)
    assert engines.plan_engine(None, {"BOTTLE_ENGINE": "podman", "BOTTLE_DOCKER": "/nonexistent"}) == ("podman", None)


def test_a_dry_run_without_an_engine_assumes_docker_and_says_so():
    assert engines.plan_engine(None, {"BOTTLE_DOCKER": "/nonexistent/docker"}) == (
        "docker", "no engine answered, so this plan assumes Docker; pass --engine to choose")


def test_a_dry_run_asks_the_client_which_engine_it_is(tmp_path):
    client = fake_client(tmp_path, "docker", PODMAN_VERSION, PODMAN_INFO)
    assert engines.plan_engine(None, {"BOTTLE_DOCKER": client}) == ("podman", None)


def test_a_dry_run_on_an_engine_start_would_refuse_says_so(tmp_path):
    info = {**PODMAN_INFO, "host": {**PODMAN_INFO["host"], "security": {"rootless": True}}}
    client = fake_client(tmp_path, "podman", PODMAN_VERSION, info)
    name, note = engines.plan_engine(None, {"BOTTLE_DOCKER": client})
    assert name == "podman"
    assert note.startswith("bottle start would refuse this engine: rootless Podman cannot run a bottle yet")


ROOTFUL = Engine(name="podman", version="4.3.1", cgroup_version="v1", network_backend="netavark")


@pytest.mark.parametrize("engine", [engines.DOCKER, ROOTFUL, Engine(name="podman", version="5.4.2",
                                                                    cgroup_version="v2", network_backend="netavark")])
def test_docker_and_rootful_podman_with_netavark_are_supported(engine):
    engines.require_supported(engine)


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (Engine(name="podman", version="4.3.1", rootless=True, cgroup_version="v1", network_backend="netavark"),
         "rootless Podman cannot run a bottle yet: on cgroup v1 rootless Podman ignores the CPU, memory and "
         "process limits, and bottle does not start a weaker bottle\n"
         "Tip: run bottle as root with rootful Podman (sudo bottle start ...), or use Docker"),
        (Engine(name="podman", version="5.4.2", rootless=True, cgroup_version="v2", network_backend="netavark"),
         "rootless Podman cannot run a bottle yet: its networking (slirp4netns or pasta) has not been proven to "
         "keep the host out of reach, and bottle does not start a weaker bottle\n"
         "Tip: run bottle as root with rootful Podman (sudo bottle start ...), or use Docker"),
        (Engine(name="podman", version="4.3.1", cgroup_version="v1", network_backend="cni"),
         "Podman 4.3.1 uses the cni network backend; bottle's isolation on Podman is proven with netavark only\n"
         "Tip: install netavark and aardvark-dns and switch to them (podman system reset), or use Docker"),
        (Engine(name="podman", version="3.4.4", cgroup_version="v2", network_backend="cni"),
         "Podman 3.4.4 is too old: bottle needs Podman 4.0 or newer with netavark, which makes internal "
         "networks without a gateway on the host\n"
         "Tip: upgrade Podman, or use Docker (--engine docker)"),
    ],
)
def test_a_podman_that_would_run_a_weaker_bottle_is_refused(engine, message):
    with pytest.raises(NotSupportedError) as info:
        engines.require_supported(engine)
    assert info.value.message == message
    assert info.value.exit_code == 6
