"""A running bottle, changed and hurt while it runs: `bottle reload` applies a new policy
live (and refuses what cannot change live), and a scanner or proxy that dies is said on
stderr at once, restarted by the engine, blocks egress while it is down, and is said to
be back (docs/prds/0013-live-policy-and-component-health.md).

Every test runs on Docker and on rootful Podman (the `engine` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AGENT_RULES, Engine, bottle_env, leftovers

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

OTHER_RULE = """    - host: other.test
      methods: [GET]
      private_upstream: true
"""
AGENT_COMMAND = ["sh", "-c", "touch /workspace/ready; sleep 300"]


def curl(url: str) -> str:
    return f"curl -sS --max-time 20 -o /tmp/body -w '%{{http_code}}' {url}; echo; cat /tmp/body; echo"


class Running:
    """`bottle start` in the background, its stderr collected line by line as it comes."""

    def __init__(self, engine: Engine, manifest: Path, tmp_path: Path) -> None:
        self.engine = engine
        self.workspace = tmp_path / "ws"
        self.env = bottle_env({**engine.env, "XDG_STATE_HOME": str(tmp_path / "state")})
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bottle", "start", str(manifest), "--", *AGENT_COMMAND],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env, cwd=tmp_path)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not (self.workspace / "ready").exists():
            assert self.process.poll() is None, f"bottle start ended early:\n{self.stderr}"
            assert time.monotonic() < deadline, f"the agent never started:\n{self.stderr}"
            time.sleep(0.1)
        self.bottle_id = next(line.split()[-1] for _, line in self.lines if line.startswith("bottle: starting "))

    def _read(self) -> None:
        for raw in self.process.stderr:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """When stderr said `text` (monotonic time); fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for when, line in list(self.lines):
                if text in line:
                    return when
            assert time.monotonic() < deadline, f"stderr never said {text!r} within {timeout:g} s:\n{self.stderr}"
            time.sleep(0.05)

    def container(self, role: str) -> str:
        return f"{self.bottle_id}-{role}"

    def get(self, url: str) -> list[str]:
        """What the agent's curl of `url` printed: the status, then the body."""
        out = self.engine("exec", self.container("agent"), "sh", "-c", curl(url), check=False)
        return (out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")).splitlines()

    def bottle(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bottle", *args], capture_output=True, text=True, env=self.env,
                              timeout=180)

    def started(self, role: str) -> tuple[str, str]:
        out = self.engine("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", self.container(role)).stdout
        return tuple(out.decode().split())

    def crash(self, role: str) -> None:
        """SIGKILL the container's main process from the host: a real crash, so the engine's
        restart policy applies (a `kill` through the engine would count as a user's stop)."""
        pid = int(self.engine("inspect", "--format", "{{.State.Pid}}", self.container(role)).stdout.decode().strip())
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reader.join(timeout=10)
        assert leftovers(self.bottle_id, self.engine) == [], f"teardown left resources behind\n{self.stderr}"


@pytest.fixture
def running(manifest, tmp_path, engine):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    started: list[Running] = []

    def start(rules: str = AGENT_RULES) -> Running:
        run = Running(engine, manifest(rules + "agent:\n  workspace: ws\n"), tmp_path)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def write_manifest(manifest, rules: str, name: str, agent: str = "") -> Path:
    """Another manifest beside the running one (the `manifest` fixture writes bottle.yaml)."""
    path = manifest(rules + "agent:\n  workspace: ws\n" + agent)
    target = path.with_name(name)
    path.rename(target)
    return target


def test_reload_adds_a_rule_live_and_refuses_what_cannot_change(running, manifest, tmp_path):
    run = running()
    proxy_before = run.started("proxy")
    refused = run.get("https://other.test/")
    assert refused[0] == "000" and "CONNECT tunnel failed, response 403" in "\n".join(refused), refused

    grown = write_manifest(manifest, AGENT_RULES.replace("  allow:\n", "  allow:\n" + OTHER_RULE), "grown.yaml")
    result = run.bottle("reload", run.bottle_id[:-2], str(grown))
    assert result.returncode == 0, result.stderr
    assert "+ allow GET other.test (private upstream)" in result.stdout
    assert f"{run.bottle_id}: reloaded (policy sha256 " in result.stdout
    assert run.get("https://other.test/")[:2] == ["200", "hello from upstream"]
    assert run.started("proxy") == proxy_before, "the proxy was restarted"

    # Refused, naming what changed; the running policy stays (other.test allowed, the rest as before).
    broken = write_manifest(manifest, AGENT_RULES.replace("  allow:\n", "  allow:\n    - hots: x.test\n"), "b.yaml")
    result = run.bottle("reload", run.bottle_id, str(broken))
    assert result.returncode == 3 and "egress.allow[0]" in result.stderr and "Traceback" not in result.stderr
    image = write_manifest(manifest, AGENT_RULES, "image.yaml", agent="  image: bottle/agent:9.9\n")
    result = run.bottle("reload", run.bottle_id, str(image))
    assert result.returncode == 9, result.stderr
    assert "agent image: bottle/agent:0.1.0 → bottle/agent:9.9" in result.stderr
    assert "the running policy stays" in result.stderr
    credential = AGENT_RULES.replace("  upstream_ca:", "  routes:\n    - host: upstream.test\n      auth:\n"
                                     "        scheme: bearer\n        token_ref: NEW_TOKEN\n  upstream_ca:")
    result = run.bottle("reload", run.bottle_id, str(write_manifest(manifest, credential, "cred.yaml")))
    assert result.returncode == 9 and "credentials (the routes' token_refs): added NEW_TOKEN" in result.stderr
    assert run.get("https://other.test/")[:2] == ["200", "hello from upstream"]
    assert run.get("https://api.anthropic.com/")[:2] == ["200", "hello from upstream"]
    assert run.started("proxy") == proxy_before

    result = run.bottle("reload", "no-such-bottle", str(grown))
    assert result.returncode == 9 and "no bottle 'no-such-bottle' runs" in result.stderr

    logs = run.bottle("logs", run.bottle_id)
    assert logs.returncode == 0, logs.stderr
    (reload_row,) = [line for line in logs.stdout.splitlines() if "RELOAD" in line]
    assert "allow" in reload_row and "policy reloaded" in reload_row


def test_a_crashed_scanner_is_said_blocks_egress_and_comes_back(running):
    run = running()
    assert run.get("https://api.anthropic.com/")[0] == "200"
    # The agent's request is in the proxy before the scanner dies, its body held back until
    # just after: the proxy scans it while the engine is still restarting the scanner.
    run.engine("exec", "-d", run.container("agent"), "sh", "-c",
               "mkfifo /tmp/body-in; "
               "(while [ ! -e /workspace/go ]; do sleep 0.01; done; echo hello) > /tmp/body-in & "
               "(curl -sS --max-time 20 -o /tmp/body -w '%{http_code}' -X POST -T - https://api.anthropic.com/ "
               "< /tmp/body-in; echo; cat /tmp/body; echo) > /workspace/out 2>&1; mv /workspace/out /workspace/done")
    time.sleep(1.5)
    killed = time.monotonic()
    run.crash("pipelock")
    (run.workspace / "go").touch()
    said = run.wait_for(f"the scanner (pipelock) of {run.bottle_id} died (exit code 137); egress is blocked "
                        "until it is back", timeout=10)
    assert said - killed < 5
    deadline = time.monotonic() + 30
    while not (run.workspace / "done").exists():
        assert time.monotonic() < deadline, "the agent's request never finished"
        time.sleep(0.05)
    answer = (run.workspace / "done").read_text().splitlines()
    assert answer[0] == "503" and "scanner unavailable" in "\n".join(answer), answer
    run.wait_for(f"the scanner (pipelock) of {run.bottle_id} is back; egress resumes", timeout=60)
    assert run.get("https://api.anthropic.com/")[:2] == ["200", "hello from upstream"]


def test_a_crashed_proxy_is_said_comes_back_with_its_policy_and_its_log(running, manifest, tmp_path):
    run = running()
    address = run.engine("inspect", "--format", "{{json .NetworkSettings.Networks}}", run.container("proxy")).stdout
    grown = write_manifest(manifest, AGENT_RULES.replace("  allow:\n", "  allow:\n" + OTHER_RULE), "grown.yaml")
    assert run.bottle("reload", run.bottle_id, str(grown)).returncode == 0
    killed = time.monotonic()
    run.crash("proxy")
    said = run.wait_for(f"the egress proxy of {run.bottle_id} died (exit code 137); the agent has no way out",
                        timeout=10)
    assert said - killed < 5
    # While it is down nothing leaves: no proxy listens (the launcher waits for its files).
    # The engine and bottle may have it back before this request; then the request went
    # through the restarted proxy's policy, and its log says so.
    down = run.get("https://api.anthropic.com/?while-down")
    if down[0] == "200":
        log_has(run, '"path":"/?REDACTED"', "allow")  # the log never shows a query's values
    else:
        assert down[0] in ("000", "403", "503") or "Failed to connect" in "\n".join(down), down
    run.wait_for(f"the egress proxy of {run.bottle_id} is back; egress resumes", timeout=90)
    after = run.engine("inspect", "--format", "{{json .NetworkSettings.Networks}}", run.container("proxy")).stdout
    agent_net = f"{run.bottle_id}-agent"
    assert json.loads(after)[agent_net]["IPAddress"] == json.loads(address)[agent_net]["IPAddress"]
    # The policy of the last reload is back (other.test), and the log is followed again.
    assert run.get("https://other.test/?after-restart")[:2] == ["200", "hello from upstream"]
    log = Path(run.env["XDG_STATE_HOME"]) / "bottle" / "logs" / f"{run.bottle_id}.jsonl"
    deadline = time.monotonic() + 10
    while '"host":"other.test"' not in log.read_text():  # its only request: after the restart
        assert time.monotonic() < deadline, "the restarted proxy's requests never reached the egress log"
        time.sleep(0.1)


def log_has(run, fragment: str, decision: str, timeout: float = 10) -> None:
    """Wait until the bottle's egress log has a line with `fragment` and that decision."""
    log = Path(run.env["XDG_STATE_HOME"]) / "bottle" / "logs" / f"{run.bottle_id}.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if fragment in line] if log.exists() else []
        if lines:
            assert lines[-1]["decision"] == decision, lines[-1]
            return
        assert time.monotonic() < deadline, f"no line with {fragment} in {log}"
        time.sleep(0.1)
