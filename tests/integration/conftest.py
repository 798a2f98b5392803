"""Integration fixtures: a real engine, bottle's real images, real pipelock, and a real
HTTPS upstream container standing in for api.anthropic.com / github.com on a test
network that the bottle's egress proxy joins (`docker.egress_network`).

`engine` runs a test once on Docker and once on rootful Podman beside it (the same
images, loaded into Podman's store by scripts/test); `docker_engine` is Docker only.
Missing prerequisites (pipelock and Podman included) fail under CI=true and skip elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bottle.plan import proxy_image
from tests.support.certs import make_upstream_pki
from tests.support.prereq import missing

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("BOTTLE_DOCKER") or shutil.which("docker") or "docker"
PODMAN = os.environ.get("BOTTLE_PODMAN") or shutil.which("podman")
UPSTREAM_IMAGE = os.environ.get("BOTTLE_TEST_UPSTREAM_IMAGE", "bottle-test/upstream:latest")
UPSTREAM_ALIASES = ("api.anthropic.com", "upstream.test", "other.test", "github.com")
PIPELOCK_IMAGE = os.environ.get("BOTTLE_TEST_PIPELOCK_IMAGE")


class Engine:
    """A real engine the tests drive, by its client: call it like the client itself."""

    def __init__(self, name: str, client: str) -> None:
        self.name = name
        self.client = client

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([self.client, *args], capture_output=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result

    @property
    def env(self) -> dict[str, str]:
        """What makes `bottle` drive this engine (as a user would choose it)."""
        return {"BOTTLE_DOCKER": self.client}

    def __repr__(self) -> str:
        return self.name


DOCKER_ENGINE = Engine("docker", DOCKER)


def docker(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return DOCKER_ENGINE(*args, check=check, input=input, timeout=timeout)


def _require(engine: Engine) -> Engine:
    try:
        ok = subprocess.run([engine.client, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        missing(f"no {engine.name} engine answers `{engine.client} info`")
    for image in (proxy_image(os.environ), "bottle/agent:0.1.0", UPSTREAM_IMAGE):
        if engine("image", "inspect", image, check=False).returncode != 0:
            missing(f"image {image} is not in {engine.name}'s store (scripts/test puts it there)")
    return engine


def wait_listening(container: str) -> None:
    """Until a test server container logs that it listens."""
    deadline = time.monotonic() + 20
    while b'"listening"' not in docker("logs", container).stdout:
        assert time.monotonic() < deadline, f"{container} never started listening"
        time.sleep(0.1)


def certs_tar(pki: dict[str, Path]) -> bytes:
    """The server certificate and key as a tar for `docker cp - CONTAINER:/` (into /certs)."""
    return subprocess.run(
        ["tar", "-C", str(pki["cert"].parent), "--transform", "s,^,certs/,", "-cf", "-", "server.pem", "server.key"],
        capture_output=True, check=True,
    ).stdout


@pytest.fixture(scope="session")
def docker_engine() -> Engine:
    return _require(DOCKER_ENGINE)


@pytest.fixture(scope="session", params=["docker", "podman"])
def engine(request, docker_engine) -> Engine:
    if request.param == "docker":
        return docker_engine
    if not PODMAN:
        missing("podman is not installed (scripts/test installs Debian's podman as root)")
    podman = _require(Engine("podman", PODMAN))
    if podman("info", "--format", "{{.Host.Security.Rootless}}").stdout.strip() == b"true":
        missing("Podman is rootless here, which bottle refuses: run the Podman tests as root")
    if PIPELOCK_IMAGE and podman("image", "inspect", PIPELOCK_IMAGE, check=False).returncode != 0:
        missing(f"image {PIPELOCK_IMAGE} is not in podman's store (scripts/test puts it there)")
    return podman


@pytest.fixture(scope="session")
def pipelock_image(docker_engine) -> str:
    if PIPELOCK_IMAGE and docker("image", "inspect", PIPELOCK_IMAGE, check=False).returncode == 0:
        return PIPELOCK_IMAGE
    missing("no pipelock image: run scripts/test (it pulls pipelock or builds it from source), "
            "or set BOTTLE_TEST_PIPELOCK_IMAGE to a local pipelock 2.3.0 image")
    raise AssertionError("unreachable")


class Upstream:
    """The HTTPS upstream container; its JSON log is what the internet saw."""

    def __init__(self, engine: Engine, network: str, container: str, pki: dict[str, Path]) -> None:
        self.engine = engine
        self.network = network
        self.container = container
        self.ca = pki["ca"]

    def events(self) -> list[dict]:
        out = self.engine("logs", self.container).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def requests(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "request"]

    def connects(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "connect"]

    @property
    def ip(self) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return self.engine("inspect", "--format", fmt, self.container).stdout.decode().strip()


@pytest.fixture(scope="session")
def upstream(engine, tmp_path_factory) -> Upstream:
    suffix = uuid.uuid4().hex[:6]
    network = f"bottle-test-net-{suffix}"
    container = f"bottle-test-upstream-{suffix}"
    pki = make_upstream_pki(tmp_path_factory.mktemp("pki"), list(UPSTREAM_ALIASES))
    engine("network", "create", "--label", "dev.bottle.test=true", network)
    try:
        # It binds 443 as non-root: Docker allows that in every container, Podman only when asked.
        argv = ["create", "--name", container, "--network", network, "--label", "dev.bottle.test=true",
                "--sysctl", "net.ipv4.ip_unprivileged_port_start=0"]
        for alias in UPSTREAM_ALIASES:
            argv += ["--network-alias", alias]
        engine(*argv, UPSTREAM_IMAGE, "--host", "0.0.0.0", "--port", "443",
               "--cert", "/certs/server.pem", "--key", "/certs/server.key", "--name", "upstream")
        tar = subprocess.run(
            ["tar", "-C", str(pki["cert"].parent), "--transform", "s,^,certs/,", "-cf", "-", "server.pem", "server.key"],
            capture_output=True, check=True,
        ).stdout
        engine("cp", "-", f"{container}:/", input=tar)
        engine("start", container)
        deadline = time.monotonic() + 20
        while not any(e.get("event") == "listening" for e in Upstream(engine, network, container, pki).events()):
            assert time.monotonic() < deadline, "the test upstream never started listening"
            time.sleep(0.1)
        yield Upstream(engine, network, container, pki)
    finally:
        engine("rm", "-f", container, check=False)
        engine("network", "rm", network, check=False)


class BottleRun:
    def __init__(self, result: subprocess.CompletedProcess, log_path: Path) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout.decode(errors="replace")
        self.stderr = result.stderr.decode(errors="replace")
        self.log_path = log_path

    @property
    def bottle_id(self) -> str:
        for line in self.stderr.splitlines():
            if line.startswith("bottle: starting "):
                return line.split()[-1]
        raise AssertionError(f"no bottle id in stderr:\n{self.stderr}")

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def requests(self) -> list[dict]:
        return [line for line in self.log() if "method" in line]


def leftovers(bottle_id: str, engine: Engine = DOCKER_ENGINE) -> list[str]:
    label = f"label=dev.bottle.bottle={bottle_id}"
    found = []
    for kind, args in (("container", ["ps", "-a"]), ("volume", ["volume", "ls"]), ("network", ["network", "ls"])):
        out = engine(*args, "--filter", label, "--format", "{{.Names}}" if kind == "container" else "{{.Name}}").stdout
        found += [f"{kind} {name}" for name in out.decode().split()]
    return found


def bottle_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BOTTLE_KEEP",)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@pytest.fixture
def manifest(tmp_path, pipelock_image, upstream):
    """Write a manifest for a bottle whose proxy joins the upstream's network."""

    def write(body: str, *, name: str = "it") -> Path:
        path = tmp_path / "bottle.yaml"
        (tmp_path / "upstream-ca.pem").write_bytes(upstream.ca.read_bytes())
        text = textwrap.dedent(body).strip("\n")
        path.write_text(
            f"version: 1\nname: {name}\n{text}\n"
            f"scanner:\n  image: {pipelock_image}\n"
            f"docker:\n  egress_network: {upstream.network}\n"
        )
        return path

    return write


@pytest.fixture
def run_bottle(tmp_path, engine):
    """Run `bottle start MANIFEST -- COMMAND` for real on `engine`; afterwards nothing of
    it may remain."""
    runs: list[BottleRun] = []

    def run(manifest_path: Path, *command: str, env: dict[str, str] | None = None, timeout: float = 180) -> BottleRun:
        log_path = tmp_path / f"egress-{len(runs)}.jsonl"
        argv = [sys.executable, "-m", "bottle", "start", "--egress-log", str(log_path), str(manifest_path)]
        if command:
            argv += ["--", *command]
        result = subprocess.run(argv, capture_output=True, env=bottle_env({**engine.env, **(env or {})}),
                                timeout=timeout, stdin=subprocess.DEVNULL, cwd=tmp_path)
        run = BottleRun(result, log_path)
        runs.append(run)
        return run

    yield run
    for r in runs:
        if "bottle: starting " in r.stderr:
            assert leftovers(r.bottle_id, engine) == [], f"teardown left resources behind\n{r.stderr}"


AGENT_RULES = """
egress:
  allow:
    - host: api.anthropic.com
      private_upstream: true
    - host: upstream.test
      methods: [GET]
      private_upstream: true
  upstream_ca: upstream-ca.pem
"""
