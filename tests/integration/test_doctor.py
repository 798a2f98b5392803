"""`bottle doctor` against the real engine: a healthy one passes, a stopped one and a
missing image are reported with the fix and a non-zero exit.

The stopped engine is a client pointed at a socket nobody serves, which is what a stopped
engine looks like to the client; the shared engine keeps running for the other tests."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.integration.conftest import Engine, bottle_env

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]


def doctor(engine: Engine, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bottle", "doctor", *args], capture_output=True, text=True,
                          env=bottle_env({**engine.env, **(env or {})}), stdin=subprocess.DEVNULL, timeout=180)


def statuses(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {c["id"]: c["status"] for c in json.loads(result.stdout)["checks"]}


def probe_networks(engine: Engine) -> list[str]:
    names = engine("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
    return [n for n in names if n.startswith("bottle-doctor-")]


def test_a_running_engine_with_bottles_images_passes(engine, pipelock_image):
    before = probe_networks(engine)
    result = doctor(engine, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1 and document["ok"] is True
    assert document["engine"].startswith("Podman " if engine.name == "podman" else "Docker ")
    found = statuses(result)
    for check in ("engine", "buildkit", "image-proxy", "image-agent", "image-scanner", "ipv6", "cgroups"):
        assert found[check] == "ok", document
    assert found["disk"] in ("ok", "warn"), document
    # The IPv6 probe made a bottle network and removed it again.
    assert probe_networks(engine) == before
    text = doctor(engine)
    assert text.returncode == 0
    assert text.stdout.startswith(f"bottle doctor: {document['engine']} (client {engine.client})\n\n[ok]   engine ")
    assert text.stdout.endswith("needs is in place.\n") or "needs is in place (1 warning).\n" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr


def test_a_stopped_engine_is_named_with_how_to_start_it(docker_engine):
    socket = f"unix:///tmp/bottle-doctor-{uuid.uuid4().hex[:8]}.sock"
    result = doctor(docker_engine, env={"DOCKER_HOST": socket})
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"bottle doctor: no engine answered (client {docker_engine.client})"
    assert lines[2].startswith(f"[FAIL] engine         no Docker engine answers {docker_engine.client}: ")
    assert socket.removeprefix("unix://") in lines[2]
    assert lines[3] == ("                      fix: start the engine (e.g. sudo systemctl start docker), or point the "
                        f"client at one that runs; the client looks at {socket}")
    assert "[skip] proxy image    not checked: no engine answers" in lines
    assert lines[-1] == "1 problem to fix before `bottle start` can run (6 not checked)."
    assert "Traceback" not in result.stdout + result.stderr and result.stderr == ""


def test_a_missing_image_is_named_with_the_command_that_makes_it(docker_engine, pipelock_image):
    image = f"bottle/proxy:doctor-missing-{uuid.uuid4().hex[:8]}"
    result = doctor(docker_engine, env={"BOTTLE_PROXY_IMAGE": image})
    assert result.returncode == 1, result.stdout
    assert (f"[FAIL] proxy image    {image} is missing: bottle start needs it for the proxy\n"
            f"                      fix: BOTTLE_PROXY_IMAGE={image} bottle build --only proxy\n") in result.stdout
    assert "[ok]   agent image    bottle/agent:0.1.0 is here" in result.stdout
    assert result.stdout.endswith("1 problem to fix before `bottle start` can run.\n")
    as_json = doctor(docker_engine, "--format", "json", env={"BOTTLE_PROXY_IMAGE": image})
    assert as_json.returncode == 1
    assert {k: v for k, v in statuses(as_json).items() if v != "ok"} == {"image-proxy": "fail"}
