"""Orchestration with fake engines: teardown on every way out, LIFO, never masking the error."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import pytest

from bottle.backend.base import BottleBackend, RunningBottle
from bottle.backend.docker.backend import DockerBackend
from bottle.backend.docker.engine import Engine
from bottle.backend.docker.plan import docker_plan
from bottle.errors import BackendError, StartError
from bottle.launch.secrets import make_secrets
from bottle.manifest import load_manifest
from bottle.plan import build_plan
from bottle.run import run_bottle

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"


def example_dplan():
    return docker_plan(build_plan(load_manifest(EXAMPLE), env={}, run_id="abc123"))


class FakeBackend(BottleBackend):
    def __init__(self, agent=lambda: 0):
        self.events: list[str] = []
        self.agent = agent

    @contextlib.contextmanager
    def launch(self, plan, secrets, *, env):
        self.events.append("launch")
        assert secrets.ca.cert_pem and secrets.scanner_token
        assert set(secrets.placeholders) == {"ANTHROPIC_API_KEY"}
        try:
            yield RunningBottle(bottle_id="b", agent="a", proxy="p", scanner="s", addresses={})
        finally:
            self.events.append("teardown")

    @contextlib.contextmanager
    def follow_egress_log(self, running, path):
        self.events.append("log")
        try:
            yield
        finally:
            self.events.append("log closed")

    def run_agent(self, running, command, *, interactive):
        self.events.append("agent")
        return self.agent()

    def cleanup(self, **kwargs):
        return 0


def test_agent_exit_code_is_returned_and_teardown_runs_in_reverse(tmp_path):
    backend = FakeBackend(agent=lambda: 7)
    assert run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={}) == 7
    assert backend.events == ["launch", "log", "agent", "log closed", "teardown"]


def test_an_error_in_the_agent_run_still_tears_down_and_propagates(tmp_path):
    def boom():
        raise BackendError("docker exec failed")

    backend = FakeBackend(agent=boom)
    with pytest.raises(BackendError, match="docker exec failed"):
        run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={})
    assert backend.events[-2:] == ["log closed", "teardown"]


@pytest.fixture
def default_dispositions():
    """Run as if started from a terminal, whatever started pytest (nohup ignores SIGHUP)."""
    before = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_tear_down_and_exit_128_plus_signal(tmp_path, sig, default_dispositions):
    def killed():
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have raised")

    backend = FakeBackend(agent=killed)
    assert run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={}) == 128 + sig
    assert backend.events[-1] == "teardown"
    assert signal.getsignal(sig) == signal.SIG_DFL


def test_under_nohup_a_hangup_does_not_stop_the_bottle(tmp_path, default_dispositions):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def hung_up():
        os.kill(os.getpid(), signal.SIGHUP)
        return 0

    backend = FakeBackend(agent=hung_up)
    assert run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={}) == 0
    assert backend.events[-1] == "teardown"
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_ctrl_c_tears_down_and_propagates(tmp_path):
    def interrupted():
        raise KeyboardInterrupt

    backend = FakeBackend(agent=interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={})
    assert backend.events[-1] == "teardown"


class FakeDocker:
    """Records every docker argv; fails the one matching `fail_on`."""

    executable = "/usr/bin/docker"

    def __init__(self, fail_on: str):
        self.calls: list[list[str]] = []
        self.inputs: dict[str, bytes] = {}
        self.fail_on = fail_on

    def argv(self, args):
        return [self.executable, *args]

    def run(self, args, *, input=None, env=None, check=True, timeout=300):
        self.calls.append(list(args))
        if input is not None:
            self.inputs[" ".join(args)] = input
        if self.fail_on in " ".join(args):
            if check:
                raise BackendError(f"`docker {' '.join(args)}` failed with exit code 1")
            return subprocess.CompletedProcess(args, 1, b"", b"boom")
        out = b""
        if args[:2] == ["inspect", "--format"]:
            out = b"172.30.0.2" if "IPAddress" in args[2] else b'{"Status": "running", "Health": {"Status": "healthy"}}'
        return subprocess.CompletedProcess(args, 0, out, b"")

    def output(self, args, **kwargs):
        return self.run(args, **kwargs).stdout.decode().strip()

    def ok(self, args, **kwargs):
        return self.run(args, check=False).returncode == 0


def removals(docker: FakeDocker) -> list[str]:
    names = []
    for call in docker.calls:
        if call[:3] == ["rm", "--force", "--volumes"]:
            names += [n for n in call[3:] if n not in ("--time", "0", "--ignore")]
        elif call[:3] == ["volume", "rm", "--force"]:
            names += call[3:]
        elif call[:2] == ["network", "rm"]:
            names += call[2:]
    return names


def test_a_failure_while_starting_the_proxy_removes_what_was_made_in_reverse(tmp_path):
    docker = FakeDocker(fail_on="start bottle-claude-abc123-proxy")
    backend = DockerBackend(docker, env={})
    with pytest.raises(BackendError, match="start bottle-claude-abc123-proxy"):
        run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={})
    removed = removals(docker)
    # Containers first (the scanner starts in parallel, so either order), then the volume,
    # then the networks; nothing of the agent was created.
    assert sorted(removed[:2]) == ["bottle-claude-abc123-pipelock", "bottle-claude-abc123-proxy"]
    assert removed[2] == "bottle-claude-abc123-pipelock-config"
    assert sorted(removed[3:]) == ["bottle-claude-abc123-agent", "bottle-claude-abc123-egress",
                                   "bottle-claude-abc123-scanner"]
    assert len(removed) == 6
    assert not [c for c in docker.calls if c[0] == "create" and "bottle-claude-abc123-agent" in c]


def test_bottle_keep_leaves_everything_for_debugging(tmp_path, capsys):
    docker = FakeDocker(fail_on="start bottle-claude-abc123-proxy")
    backend = DockerBackend(docker, env={"BOTTLE_KEEP": "1"})
    with pytest.raises(BackendError):
        run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={})
    assert removals(docker) == []
    assert "BOTTLE_KEEP is set, keeping container bottle-claude-abc123-proxy" in capsys.readouterr().err


def test_credentials_reach_docker_create_by_environment_never_argv(tmp_path, monkeypatch):
    seen_env = {}

    class RecordingDocker(FakeDocker):
        def run(self, args, *, env=None, **kwargs):
            if args[:1] == ["create"] and "bottle-claude-abc123-proxy" in args:
                seen_env.update(env or {})
            return super().run(args, env=env, **kwargs)

    docker = RecordingDocker(fail_on="start bottle-claude-abc123-agent")
    dplan = docker_plan(build_plan(load_manifest(EXAMPLE), env={"ANTHROPIC_API_KEY": "sk-ant-real"}, run_id="abc123"))
    with pytest.raises(BackendError):
        run_bottle(dplan, DockerBackend(docker, env={}), egress_log=tmp_path / "l.jsonl",
                   env={"ANTHROPIC_API_KEY": "sk-ant-real"})
    assert seen_env["ANTHROPIC_API_KEY"] == "sk-ant-real"
    assert not any("sk-ant-real" in arg for call in docker.calls for arg in call)
    agent_create = next(c for c in docker.calls if c[0] == "create" and "bottle-claude-abc123-agent" in c)
    placeholder = next(a for a in agent_create if a.startswith("ANTHROPIC_API_KEY="))
    assert placeholder.startswith("ANTHROPIC_API_KEY=bottle-placeholder-anthropic-api-key-")


def test_a_missing_image_is_explained_with_a_tip(tmp_path):
    class MissingImage(FakeDocker):
        def run(self, args, **kwargs):
            if args[:1] == ["create"] and "bottle-claude-abc123-agent" in args:
                self.calls.append(list(args))
                raise BackendError("`docker create ...` failed with exit code 125\n  stderr:\n"
                                   "    Unable to find image 'bottle/agent:0.1.0' locally")
            return super().run(args, **kwargs)

    docker = MissingImage(fail_on="nothing-fails")
    with pytest.raises(StartError) as info:
        run_bottle(example_dplan(), DockerBackend(docker, env={}), egress_log=tmp_path / "l.jsonl", env={})
    assert info.value.message == (
        "the agent image bottle/agent:0.1.0 is not available here and could not be pulled:\n"
        "  Unable to find image 'bottle/agent:0.1.0' locally\n"
        "Tip: build bottle's images with `bottle build`, or set the image in the manifest"
    )
    assert "bottle-claude-abc123-agent" in removals(docker)


def test_a_failed_start_does_not_wait_for_the_scanners_health(tmp_path):
    import time

    class NeverHealthy(FakeDocker):
        def run(self, args, **kwargs):
            result = super().run(args, **kwargs)
            if args[:3] == ["inspect", "--format", "{{json .State}}"]:
                result = subprocess.CompletedProcess(args, 0, b'{"Status": "running", "Health": {"Status": "starting"}}', b"")
            return result

    docker = NeverHealthy(fail_on="start bottle-claude-abc123-proxy")
    started = time.monotonic()
    with pytest.raises(BackendError):
        run_bottle(example_dplan(), DockerBackend(docker, env={}), egress_log=tmp_path / "l.jsonl", env={})
    assert time.monotonic() - started < 5  # not the 60 s health timeout
    assert "bottle-claude-abc123-pipelock" in removals(docker)


PODMAN = Engine(name="podman", version="4.3.1", cgroup_version="v1", network_backend="netavark")


def podman_dplan():
    return docker_plan(build_plan(load_manifest(EXAMPLE), env={}, run_id="abc123"), "podman")


def delivered_policy(docker: FakeDocker) -> dict:
    import io
    import json
    import tarfile

    tar = next(data for call, data in docker.inputs.items() if "bottle.mitm.receive" in call)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return json.loads(archive.extractfile("policy.json").read())


def test_on_podman_pipelock_keeps_a_root_owned_config_and_is_reached_by_address(tmp_path):
    docker = FakeDocker(fail_on="nothing-fails")
    backend = DockerBackend(docker, env={}, engine=PODMAN)
    with backend.launch(podman_dplan(), make_secrets("bottle-claude-abc123", ("ANTHROPIC_API_KEY",)), env={}):
        pass
    calls = [" ".join(c) for c in docker.calls]
    # `podman cp` would chown the config to pipelock's user; Podman without systemd
    # never runs health checks by itself.
    assert "cp --archive=false - bottle-claude-abc123-pipelock:/etc/pipelock" in calls
    assert "healthcheck run bottle-claude-abc123-pipelock" in calls
    assert delivered_policy(docker)["scanner"]["url"] == "http://172.30.0.2:9090/api/v1/scan"
    assert "rm --force --volumes --time 0 --ignore bottle-claude-abc123-agent bottle-claude-abc123-proxy " \
           "bottle-claude-abc123-pipelock" in calls


def test_on_docker_pipelock_is_reached_by_its_alias(tmp_path):
    docker = FakeDocker(fail_on="nothing-fails")
    with DockerBackend(docker, env={}).launch(example_dplan(), make_secrets("b", ("ANTHROPIC_API_KEY",)), env={}):
        pass
    assert delivered_policy(docker)["scanner"]["url"] == "http://pipelock:9090/api/v1/scan"
    assert not [c for c in docker.calls if c[0] in ("healthcheck",) or "--archive=false" in c]


def test_an_agent_network_that_drops_traffic_stops_the_start_with_a_tip(tmp_path):
    class Dropping(FakeDocker):
        def run(self, args, *, check=True, **kwargs):
            if "bottle.mitm.receive" in args and "--reach" in args:
                # What bottle.mitm.receive --reach says when its probe of the agent times out.
                self.calls.append(list(args))
                return subprocess.CompletedProcess(args, 3, b"", b"TimeoutError: timed out\n")
            return super().run(args, check=check, **kwargs)

    docker = Dropping(fail_on="nothing-fails")
    with pytest.raises(StartError) as info:
        run_bottle(podman_dplan(), DockerBackend(docker, env={}, engine=PODMAN), egress_log=tmp_path / "l.jsonl",
                   env={})
    assert info.value.message == (
        "the proxy cannot reach the agent on the network bottle-claude-abc123-agent: TimeoutError: timed out\n"
        "Tip: if Docker runs on this host too, its iptables FORWARD policy DROP also drops traffic on Podman's "
        "bridges; allow bridged traffic on them in Docker's DOCKER-USER chain: iptables -I DOCKER-USER -i "
        "podman+ -o podman+ -m physdev --physdev-is-bridged -j ACCEPT"
    )
    receive_call = next(c for c in docker.calls if "bottle.mitm.receive" in c)
    assert receive_call[receive_call.index("--reach") + 1] == "172.30.0.2"  # the agent's address (FakeDocker)
    assert "bottle-claude-abc123-agent" in removals(docker)


def test_cleanup_reads_labels_with_inspect_on_either_engine(tmp_path):
    import json

    class Leftovers(FakeDocker):
        def run(self, args, *, check=True, **kwargs):
            self.calls.append(list(args))
            out = b""
            if args[:2] == ["ps", "--all"]:
                out = b"bottle-x-1-agent\n"
            elif args[0] == "inspect":
                out = json.dumps({"dev.bottle.bottle": "bottle-x-1", "dev.bottle.owner": "elsewhere:1"}).encode()
            return subprocess.CompletedProcess(args, 0, out, b"")

    for engine in (PODMAN, Engine(name="docker")):
        docker, said = Leftovers(fail_on="nothing-fails"), []
        assert DockerBackend(docker, env={}, engine=engine).cleanup(remove_running=False, dry_run=True,
                                                                    echo=said.append) == 1
        assert said == ["would remove container bottle-x-1-agent"]


def transparent_dplan():
    plan = build_plan(load_manifest(EXAMPLE), env={}, run_id="abc123")
    return docker_plan(dataclasses.replace(plan, egress=dataclasses.replace(plan.egress, capture="transparent")))


def test_transparent_capture_is_installed_after_the_reach_check_and_before_the_agent_command(tmp_path):
    docker = FakeDocker(fail_on="nothing-fails")
    with DockerBackend(docker, env={}).launch(transparent_dplan(), make_secrets("b", ("ANTHROPIC_API_KEY",)),
                                              env={}) as running:
        calls_when_running = len(docker.calls)  # the agent command could run from here on
    steps = [" ".join(c[:2]) + (" " + c[c.index("--name") + 1] if "--name" in c else "") for c in docker.calls]
    reach = next(i for i, c in enumerate(docker.calls) if c[:2] == ["exec", "bottle-claude-abc123-proxy"]
                 and "--reach-only" in c)
    assert docker.calls[reach][2:] == ["/opt/bottle-proxy/bin/python", "-m", "bottle.mitm.receive", "--dir",
                                       "/run/bottle", "--reach-only", "--reach", "172.30.0.2", "--reach-timeout", "3"]
    install = steps.index("run --rm bottle-claude-abc123-capture")
    assert reach < install < calls_when_running
    # The delivery does not check again: the capture may be in place by then.
    delivery = next(c for c in docker.calls if "bottle.mitm.receive" in c and "--reach-only" not in c)
    assert "--reach" not in delivery
    ruleset = next(data for call, data in docker.inputs.items() if "bottle-claude-abc123-capture" in call).decode()
    assert "tcp dport 443 dnat ip to 172.30.0.2:15002" in ruleset and "<proxy-ip>" not in ruleset
    assert docker.calls[install][-2:] == ["-c", "set -eu; ip route replace default via 172.30.0.2; nft -f -"]
    assert delivered_policy(docker)["transparent"] == {
        "ports": [{"port": 80, "listen": 15001}, {"port": 443, "listen": 15002}], "dns_address": "198.18.0.1"}
    assert running.capture_report[:3] == ("run", "--rm", "--name")


def test_a_capture_that_cannot_be_installed_stops_the_start_with_a_tip(tmp_path):
    class NoNft(FakeDocker):
        def run(self, args, *, check=True, **kwargs):
            if args[:2] == ["run", "--rm"]:
                self.calls.append(list(args))
                return subprocess.CompletedProcess(args, 127, b"", b"sh: 1: nft: not found\n")
            return super().run(args, check=check, **kwargs)

    docker = NoNft(fail_on="nothing-fails")
    with pytest.raises(StartError) as info:
        run_bottle(transparent_dplan(), DockerBackend(docker, env={}), egress_log=tmp_path / "l.jsonl", env={})
    assert info.value.message == (
        "installing the transparent capture in the agent's network namespace failed:\n  sh: 1: nft: not found\n"
        "Tip: the helper runs the proxy image's nft and ip with NET_ADMIN; rebuild the proxy image with `bottle build "
        "--only proxy` if it lacks them, and the host kernel needs nf_tables (nft list tables)"
    )
    removed = set(removals(docker))
    assert "bottle-claude-abc123-agent" in removed
    assert "bottle-claude-abc123-capture" not in removed  # `run --rm` removed it when it returned


REPORT = ('{"nftables": [{"metainfo": {"version": "1.1.3"}}, {"set": {"family": "inet", "name": "dropped", '
          '"table": "bottle", "elem": [{"elem": {"val": {"concat": ["93.184.216.34", "tcp", 22]}, '
          '"counter": {"packets": 3, "bytes": 180}}}, {"elem": {"val": {"concat": ["93.184.216.34", "icmp", 0]}, '
          '"counter": {"packets": 1, "bytes": 28}}}]}}]}')


def test_what_the_capture_rejected_is_appended_to_the_egress_log_before_teardown(tmp_path):
    import json

    class Reporting(FakeDocker):
        def argv(self, args):
            return ["true"]  # `logs --follow` runs as a process of its own

        def run(self, args, *, check=True, **kwargs):
            if "bottle-claude-abc123-capture-report" in args:
                self.calls.append(list(args))
                return subprocess.CompletedProcess(args, 0, REPORT.encode(), b"")
            if args[:1] == ["logs"]:
                self.calls.append(list(args))
                return subprocess.CompletedProcess(args, 0, b'{"event":"policy_reload"}\n', b"")
            return super().run(args, check=check, **kwargs)

    docker = Reporting(fail_on="nothing-fails")
    backend = DockerBackend(docker, env={})
    log = tmp_path / "l.jsonl"
    with backend.launch(transparent_dplan(), make_secrets("b", ("ANTHROPIC_API_KEY",)), env={}) as running:
        with backend.follow_egress_log(running, log):
            pass
        report = next(i for i, c in enumerate(docker.calls) if "bottle-claude-abc123-capture-report" in c)
        assert not [c for c in docker.calls[:report] if c[:2] == ["rm", "--force"]]  # read before teardown
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0] == {"event": "policy_reload"}
    assert [(l["event"], l["protocol"], l["address"], l["port"], l["packets"], l["client"], l["decision"])
            for l in lines[1:]] == [("capture_drop", "icmp", "93.184.216.34", None, 1, "172.30.0.2", "block"),
                                    ("capture_drop", "tcp", "93.184.216.34", 22, 3, "172.30.0.2", "block")]


def test_a_capture_report_that_cannot_be_read_is_a_warning_and_teardown_goes_on(tmp_path, capsys):
    class Gone(FakeDocker):
        def argv(self, args):
            return ["true"]

        def run(self, args, *, check=True, **kwargs):
            if "bottle-claude-abc123-capture-report" in args:
                self.calls.append(list(args))
                return subprocess.CompletedProcess(args, 125, b"", b"Error: No such container: bottle-claude-abc123-agent\n")
            return super().run(args, check=check, **kwargs)

    docker = Gone(fail_on="nothing-fails")
    backend = DockerBackend(docker, env={})
    with backend.launch(transparent_dplan(), make_secrets("b", ("ANTHROPIC_API_KEY",)), env={}) as running:
        with backend.follow_egress_log(running, tmp_path / "l.jsonl"):
            pass
    assert "bottle: warning: could not read what the transparent capture rejected: Error: No such container: " \
           "bottle-claude-abc123-agent" in capsys.readouterr().err
    assert "bottle-claude-abc123-agent" in removals(docker)
