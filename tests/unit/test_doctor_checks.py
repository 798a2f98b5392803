"""`bottle doctor` against a fake engine: each check's ok, warn and fail as a user reads
them, the JSON document, and the exit code."""

from __future__ import annotations

import json
import subprocess
from collections import namedtuple

import pytest
from click.testing import CliRunner

from bottle.backend.docker import doctor as dd
from bottle.backend.docker.cli import DockerCLI
from bottle.cli import cli
from bottle.doctor import Check, Report, render_text

GIB = 1 << 30
Usage = namedtuple("Usage", "total used free")
DOCKER_VERSION = {"Client": {"Platform": {"Name": "Docker Engine - Community"}, "Version": "26.1.5"},
                  "Server": {"Components": [{"Name": "Engine"}], "Version": "26.1.5"}}
DOCKER_INFO = {"MemoryLimit": True, "SwapLimit": True, "CpuCfsQuota": True, "PidsLimit": True,
               "CgroupVersion": "2", "DockerRootDir": "/var/lib/docker"}
PODMAN_INFO = {"host": {"cgroupVersion": "v2", "cgroupControllers": ["cpuset", "cpu", "io", "memory", "pids"],
                        "networkBackend": "netavark", "security": {"rootless": False}},
               "store": {"graphRoot": "/var/lib/containers/storage"}, "version": {"Version": "4.9.3"}}


class FakeEngine(DockerCLI):
    """Answers the commands the doctor runs from a table; records what it was asked."""

    def __init__(self, executable: str = "/usr/bin/docker", **answers) -> None:
        self.executable = executable
        self.calls: list[list[str]] = []
        self.version = answers.get("version", (0, json.dumps(DOCKER_VERSION), ""))
        self.buildx = answers.get("buildx", (0, "github.com/docker/buildx v0.14.0 171fcbe\n", ""))
        self.images = answers.get("images", {})  # image -> stderr when missing
        self.network = answers.get("network", [{"Name": "n", "EnableIPv6": False,
                                                "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}]}}])
        self.info = answers.get("info", DOCKER_INFO)

    def run(self, args, *, input=None, env=None, check=True, timeout=300):
        args = list(args)
        self.calls.append(args)
        code, out, err = 0, "", ""
        if args[:1] == ["version"] and "{{json .}}" in args:
            code, out, err = self.version
        elif args[:1] == ["version"]:
            out = DOCKER_VERSION["Client"]["Version"]
        elif args[:2] == ["buildx", "version"]:
            code, out, err = self.buildx
        elif args[:2] == ["image", "inspect"]:
            missing = self.images.get(args[-1])
            code, out, err = (1, "", missing) if missing else (0, "sha256:" + "ab" * 32 + "\n", "")
        elif args[:2] == ["network", "inspect"]:
            out = json.dumps(self.network)
        elif args[:1] == ["info"]:
            out = json.dumps(self.info)
        result = subprocess.CompletedProcess(args, code, out.encode(), err.encode())
        if check and code != 0:
            from bottle.errors import BackendError
            raise BackendError(f"`docker {' '.join(args)}` failed with exit code {code}\n  stderr:\n    {err}")
        return result


@pytest.fixture
def engine(monkeypatch):
    """Install a fake engine (keyword answers as FakeEngine takes them) and plenty of disk."""
    made: list[FakeEngine] = []

    def install(**answers) -> FakeEngine:
        fake = FakeEngine(**answers)
        made.append(fake)
        monkeypatch.setattr(dd, "client_for", lambda requested, env: fake)
        return fake

    monkeypatch.setattr(dd.shutil, "disk_usage", lambda path: Usage(252 * GIB, 100 * GIB, 68 * GIB))
    monkeypatch.setattr(dd, "owner_label", lambda: "host:42")
    return install


def doctor(*args, env=None):
    return CliRunner().invoke(cli, ["doctor", *args], env=env or {}, catch_exceptions=False)


def finding(result, check_id):
    return next(c for c in json.loads(result.output)["checks"] if c["id"] == check_id)


def test_a_healthy_docker_passes_every_check_and_exits_0(engine):
    fake = engine()
    result = doctor()
    assert result.exit_code == 0, result.output
    assert result.output == (
        "bottle doctor: Docker 26.1.5 (client /usr/bin/docker)\n"
        "\n"
        "[ok]   engine         Docker 26.1.5 answers /usr/bin/docker; bottle supports it\n"
        "[ok]   BuildKit       bottle build uses github.com/docker/buildx v0.14.0 171fcbe\n"
        "[ok]   proxy image    bottle/proxy:0.1.0 is here (image abababababab)\n"
        "[ok]   agent image    bottle/agent:0.1.0 is here (image abababababab)\n"
        "[ok]   scanner image  ghcr.io/luckypipewrench/pipelock:2.3.0 is here (image abababababab)\n"
        "[ok]   no IPv6        a bottle network gets no IPv6 address, so the engine turns IPv6 off in the agent\n"
        "[ok]   limits         cpu, memory, swap and pids limits are enforced (cgroup v2)\n"
        "[ok]   free disk      68.0 GiB free of 252.0 GiB in /var/lib/docker\n"
        "\n"
        "Everything `bottle start` needs is in place.\n"
    )
    # The probe network is a bottle's agent network, labelled as one, and removed again.
    create = next(c for c in fake.calls if c[:2] == ["network", "create"])
    name = create[-1]
    assert name.startswith("bottle-doctor-") and name.endswith("-agent")
    assert create[:5] == ["network", "create", "--driver", "bridge", "--internal"]
    assert "com.docker.network.bridge.inhibit_ipv4=true" in create
    assert "dev.bottle.managed=true" in create and "dev.bottle.owner=host:42" in create
    assert ["network", "rm", name] in fake.calls


def test_the_json_document_is_versioned_and_lists_every_check(engine):
    engine(images={"bottle/agent:0.1.0": "Error: No such image: bottle/agent:0.1.0"})
    result = doctor("--format", "json")
    assert result.exit_code == 1
    document = json.loads(result.output)
    assert (document["version"], document["ok"], document["engine"], document["client"]) == (
        1, False, "Docker 26.1.5", "/usr/bin/docker")
    assert [c["id"] for c in document["checks"]] == [
        "engine", "buildkit", "image-proxy", "image-agent", "image-scanner", "ipv6", "cgroups", "disk"]
    assert document["checks"][3] == {
        "id": "image-agent", "title": "agent image", "status": "fail",
        "finding": "bottle/agent:0.1.0 is missing: bottle start needs it for the agent",
        "fix": "bottle build --only agent"}
    assert all(set(c) == {"id", "title", "status", "finding", "fix"} for c in document["checks"])


def test_a_stopped_engine_is_one_failure_with_the_fix_and_the_rest_not_checked(engine):
    engine(version=(1, json.dumps({"Client": DOCKER_VERSION["Client"], "Server": None}),
                    "Cannot connect to the Docker daemon at unix:///tmp/gone.sock. Is the docker daemon running?"))
    result = doctor(env={"DOCKER_HOST": "unix:///tmp/gone.sock"})
    assert result.exit_code == 1
    assert result.output.startswith(
        "bottle doctor: no engine answered (client /usr/bin/docker)\n\n"
        "[FAIL] engine         no Docker engine answers /usr/bin/docker: Cannot connect to the Docker daemon at "
        "unix:///tmp/gone.sock. Is the docker daemon running?\n"
        "                      fix: start the engine (e.g. sudo systemctl start docker), or point the client at one "
        "that runs; the client looks at unix:///tmp/gone.sock\n"
        "[ok]   BuildKit       ")
    assert "[skip] proxy image    not checked: no engine answers\n" in result.output
    assert result.output.endswith("1 problem to fix before `bottle start` can run (6 not checked).\n")


def test_permission_denied_on_the_socket_says_how_to_get_access(engine):
    engine(version=(1, json.dumps({"Client": DOCKER_VERSION["Client"]}),
                    "permission denied while trying to connect to the Docker daemon socket at "
                    "unix:///var/run/docker.sock"))
    result = doctor("--format", "json")
    assert result.exit_code == 1
    assert finding(result, "engine")["fix"] == (
        "let your user use the engine's socket (sudo usermod -aG docker $USER, then log in again), "
        "or run bottle with sudo")


def test_no_engine_client_at_all_is_a_failure_not_a_traceback():
    result = doctor(env={"BOTTLE_DOCKER": "/nonexistent/docker"})
    assert result.exit_code == 1
    assert result.output.startswith(
        "bottle doctor: no engine answered\n\n"
        "[FAIL] engine         the engine client '/nonexistent/docker' was not found\n"
        "                      fix: install Docker or Podman, or set BOTTLE_DOCKER to the path of a "
        "docker-compatible client\n"
        "[skip] BuildKit       not checked: there is no engine client to ask\n")


def test_a_missing_proxy_image_names_the_build_with_the_image_name_in_use(engine):
    engine(images={"registry.example/bottle-proxy:1": "Error: No such image: registry.example/bottle-proxy:1"})
    result = doctor(env={"BOTTLE_PROXY_IMAGE": "registry.example/bottle-proxy:1"})
    assert result.exit_code == 1
    assert ("[FAIL] proxy image    registry.example/bottle-proxy:1 is missing: bottle start needs it for the proxy\n"
            "                      fix: BOTTLE_PROXY_IMAGE=registry.example/bottle-proxy:1 bottle build --only proxy\n"
            ) in result.output


def test_a_missing_scanner_image_says_pull_or_build_from_source(engine):
    engine(images={"ghcr.io/luckypipewrench/pipelock:2.3.0": "Error: No such image: x"})
    result = doctor("--format", "json")
    assert finding(result, "image-scanner")["fix"] == (
        "docker pull ghcr.io/luckypipewrench/pipelock:2.3.0, or where the registry cannot be reached: "
        "bottle build --only pipelock --pipelock-source ARCHIVE_OR_DIR")


def test_no_buildkit_is_a_warning_because_start_does_not_need_it(engine):
    engine(buildx=(1, "", "docker: 'buildx' is not a docker command."))
    result = doctor()
    assert result.exit_code == 0, result.output
    assert ("[warn] BuildKit       /usr/bin/docker (client 26.1.5) has no buildx plugin, so it cannot run BuildKit "
            "builds; `bottle build` cannot run (`bottle start` can)\n"
            "                      fix: install the docker-buildx plugin, or set BOTTLE_DOCKER to a client with "
            "BuildKit (e.g. /usr/bin/docker from Debian's docker.io package)\n") in result.output
    assert result.output.endswith("Everything `bottle start` needs is in place (1 warning).\n")


def test_ipv6_on_bottle_networks_fails(engine):
    engine(network=[{"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"},
                                                            {"Subnet": "fd00:b0::/64"}]}}])
    result = doctor("--format", "json")
    assert result.exit_code == 1
    check = finding(result, "ipv6")
    assert check["status"] == "fail"
    assert check["finding"] == ("the engine gives bottle networks IPv6 (fd00:b0::/64), so the agent would have an "
                                "address the plan does not show")
    assert "daemon.json" in check["fix"]


@pytest.mark.parametrize(("info", "status", "text"), [
    pytest.param({**DOCKER_INFO, "MemoryLimit": False, "PidsLimit": False}, "fail",
                 "the engine cannot enforce memory, pids limits (cgroup v2), so a bottle would run without the "
                 "limits its plan sets", id="memory-and-pids-missing"),
    pytest.param({**DOCKER_INFO, "SwapLimit": False, "CgroupVersion": "1"}, "warn",
                 "cpu, memory and pids limits work (cgroup v1); swap is not limited, so the agent may swap beyond its "
                 "memory limit", id="no-swap-limit"),
])
def test_limits_the_engine_cannot_enforce(engine, info, status, text):
    engine(info=info)
    result = doctor("--format", "json")
    check = finding(result, "cgroups")
    assert (check["status"], check["finding"]) == (status, text)
    assert check["fix"]
    assert result.exit_code == (1 if status == "fail" else 0)


@pytest.mark.parametrize(("free", "status", "exit_code"), [(0.5, "fail", 1), (3, "warn", 0), (68, "ok", 0)])
def test_free_disk_in_the_engines_data_root(engine, monkeypatch, free, status, exit_code):
    engine()
    seen = []
    monkeypatch.setattr(dd.shutil, "disk_usage",
                        lambda path: seen.append(path) or Usage(100 * GIB, 0, int(free * GIB)))
    result = doctor("--format", "json")
    assert seen == ["/var/lib/docker"]
    check = finding(result, "disk")
    assert check["status"] == status and check["finding"].startswith(f"{free:.1f} GiB free of 100.0 GiB")
    assert (check["fix"] is None) == (status == "ok")
    assert result.exit_code == exit_code


def test_a_remote_engines_disk_is_not_guessed_from_this_host(engine):
    engine()
    result = doctor("--format", "json", env={"DOCKER_HOST": "tcp://build.example:2376"})
    assert finding(result, "disk") == {"id": "disk", "title": "free disk", "status": "skip",
                                       "finding": "not checked: the engine runs elsewhere "
                                       "(DOCKER_HOST=tcp://build.example:2376)", "fix": None}


def test_podman_is_judged_by_the_same_rules_as_bottle_start(engine):
    podman_version = json.dumps({"Client": {"APIVersion": "4.9.3", "Version": "4.9.3", "OsArch": "linux/amd64"}})
    engine(executable="/usr/bin/podman", version=(0, podman_version, ""),
           info={**PODMAN_INFO, "host": {**PODMAN_INFO["host"], "security": {"rootless": True}}})
    result = doctor("--format", "json", env={"BOTTLE_DOCKER": "/usr/bin/podman"})
    assert result.exit_code == 1
    check = finding(result, "engine")
    assert check["status"] == "fail"
    assert check["finding"].startswith("rootless Podman cannot run a bottle yet")
    assert check["fix"] == "run bottle as root with rootful Podman (sudo bottle start ...), or use Docker"


def test_rootful_podman_passes_with_its_own_builder_and_cgroup_controllers(engine):
    podman_version = json.dumps({"Client": {"APIVersion": "4.9.3", "Version": "4.9.3", "OsArch": "linux/amd64"}})
    fake = engine(executable="/usr/bin/podman", version=(0, podman_version, ""), info=PODMAN_INFO,
                  network=[{"name": "n", "ipv6_enabled": False, "subnets": [{"subnet": "10.89.0.0/24"}]}])
    result = doctor("--format", "json", env={"BOTTLE_DOCKER": "/usr/bin/podman"})
    assert result.exit_code == 0, result.output
    assert finding(result, "buildkit")["finding"] == "podman build (Buildah) builds bottle's images; no BuildKit needed"
    assert finding(result, "ipv6")["finding"] == (
        "a bottle network gets no IPv6 address, the agent and scanner also turn IPv6 off (sysctl)")
    assert finding(result, "cgroups")["finding"] == "cpu, memory and pids limits are enforced (cgroup v2)"
    assert finding(result, "disk")["finding"].endswith("in /var/lib/containers/storage")
    assert "--disable-dns" in next(c for c in fake.calls if c[:2] == ["network", "create"])
    assert ["buildx", "version"] not in fake.calls


def test_a_check_that_trips_is_a_finding_not_a_traceback(engine):
    engine(network="not a list of networks")
    result = doctor("--format", "json")
    assert result.exit_code == 1
    assert finding(result, "ipv6")["finding"].startswith("the check itself failed: AttributeError")


def test_the_text_puts_each_fix_under_its_finding():
    report = Report(engine="Docker 1", client="/d", checks=(
        Check(id="a", title="a", status="ok", finding="fine"),
        Check(id="bb", title="bb", status="warn", finding="hm", fix="do x"),
    ))
    assert render_text(report) == (
        "bottle doctor: Docker 1 (client /d)\n\n"
        "[ok]   a   fine\n"
        "[warn] bb  hm\n"
        "           fix: do x\n\n"
        "Everything `bottle start` needs is in place (1 warning).\n")
