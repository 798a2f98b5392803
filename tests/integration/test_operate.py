"""Operating bottles for real (docs/prds/0012-operating-bottles.md): eight bottles started
detached at once on Docker, each with its own allowed host on one HTTPS upstream; `exec`,
`ps`, `logs --agent`, `wait`, `stop`, and what each leaves behind.

The bottles' state lives in a private $XDG_STATE_HOME, so `stop --all` only sees this
test's bottles (other suites run bottles on the same engine at the same time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bottle.plan import PROXY_PORT
from tests.integration.conftest import DOCKER, UPSTREAM_IMAGE, Upstream, bottle_env, certs_tar, docker, leftovers, wait_listening
from tests.support.certs import make_upstream_pki

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

COUNT = 8
HOSTS = [f"h{i}.op.test" for i in range(COUNT)]
HOST_ONLY = "BOTTLE_TEST_HOST_ONLY"


@pytest.fixture(scope="module")
def world(docker_engine, pipelock_image, tmp_path_factory):
    """One upstream container answering for every bottle's host, on a network every proxy joins."""
    suffix = uuid.uuid4().hex[:6]
    network, container = f"bottle-test-op-net-{suffix}", f"bottle-test-op-upstream-{suffix}"
    pki = make_upstream_pki(tmp_path_factory.mktemp("op-pki"), HOSTS)
    docker("network", "create", "--label", "dev.bottle.test=true", network)
    try:
        argv = ["create", "--name", container, "--network", network, "--label", "dev.bottle.test=true"]
        for host in HOSTS:
            argv += ["--network-alias", host]
        docker(*argv, UPSTREAM_IMAGE, "--host", "0.0.0.0", "--port", "443", "--cert", "/certs/server.pem",
               "--key", "/certs/server.key", "--name", "upstream")
        docker("cp", "-", f"{container}:/", input=certs_tar(pki))
        docker("start", container)
        wait_listening(container)
        yield {"upstream": Upstream(docker_engine, network, container, pki), "pipelock": pipelock_image,
               "state": tmp_path_factory.mktemp("op-state"), "dir": tmp_path_factory.mktemp("op-manifests")}
    finally:
        docker("rm", "-f", container, check=False)
        docker("network", "rm", network, check=False)


def write_manifest(world, i: int, *, name: str | None = None) -> Path:
    directory = world["dir"]
    (directory / "upstream-ca.pem").write_bytes(world["upstream"].ca.read_bytes())
    path = directory / f"op{i}.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: {name or f"op{i}"}
        egress:
          allow:
            - host: {HOSTS[i]}
              private_upstream: true
          upstream_ca: upstream-ca.pem
        scanner:
          image: {world["pipelock"]}
        docker:
          egress_network: {world["upstream"].network}
        """))
    return path


def bottle(world, *args: str, timeout: float = 240, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = bottle_env({"XDG_STATE_HOME": str(world["state"]), "BOTTLE_DOCKER": DOCKER,
                      HOST_ONLY: "host-value-must-not-leak"})
    return subprocess.run([sys.executable, "-m", "bottle", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=stdin, cwd=world["dir"])


def inspect(container: str, template: str) -> str:
    return docker("inspect", "--format", template, container).stdout.decode().strip()


def ps_json(world, *args: str) -> dict:
    result = bottle(world, "ps", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_eight_detached_bottles_each_reach_only_their_host_and_stop_cleanly(world):
    ids: list[str] = []
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(COUNT) as pool:
            runs = list(pool.map(lambda i: bottle(world, "start", "-d", str(write_manifest(world, i)),
                                                  "--", "sleep", "600"), range(COUNT)))
        for run in runs:
            assert run.returncode == 0, run.stderr
            ids.append(run.stdout.strip())
        print(f"8 detached starts took {time.monotonic() - started:.1f} s")
        assert len(set(ids)) == COUNT and all(i.startswith(f"bottle-op{n}-") for n, i in enumerate(ids))
        assert all("bottle: starting " in run.stderr and "egress log:" in run.stderr for run in runs)

        # ps: all eight running, every component up, in the table and the JSON.
        document = ps_json(world)
        assert document["version"] == 1
        rows = {row["id"]: row for row in document["bottles"]}
        assert set(rows) == set(ids)
        for row in rows.values():
            assert (row["state"], row["status"], row["problems"]) == ("running", "running", [])
            assert row["components"] == {"agent": "running", "proxy": "running", "scanner": "healthy"}
            assert row["command"] == ["sleep", "600"] and row["detached"] is True
        # The supervisor owns the bottle: `bottle cleanup` leaves it alone while it runs.
        owner = inspect(f"{ids[0]}-proxy", '{{index .Config.Labels "dev.bottle.owner"}}')
        assert owner == f"{rows[ids[0]]['supervisor']['host']}:{rows[ids[0]]['supervisor']['pid']}"
        table = bottle(world, "ps").stdout.splitlines()
        assert table[0].split()[:4] == ["BOTTLE", "ID", "NAME", "STATE"]
        assert sorted(line.split()[0] for line in table[1:]) == sorted(ids)
        assert all(line.split()[2] == "running" for line in table[1:])

        # Each agent reaches its own host through its proxy; another bottle's host is refused.
        def probe(n: int) -> tuple[int, subprocess.CompletedProcess]:
            other = HOSTS[(n + 1) % COUNT]
            script = (f"id -u; echo \"proxy=$HTTPS_PROXY\"; echo \"leak=${{{HOST_ONLY}:-none}}\"; "
                      f"curl -sS -o /dev/null -w '%{{http_code}}\\n' https://{HOSTS[n]}/; "
                      f"curl -sS -o /dev/null -w '%{{http_connect}}' https://{other}/; echo \" rc=$?\"")
            return n, bottle(world, "exec", ids[n][:len("bottle-opN-") + 4], "--", "sh", "-c", script)

        with ThreadPoolExecutor(4) as pool:
            probes = dict(pool.map(probe, range(COUNT)))
        for n, result in probes.items():
            assert result.returncode == 0, result.stderr
            uid, proxy, leak, own, other = result.stdout.splitlines()
            agent = f"{ids[n]}-agent"
            assert uid == inspect(agent, "{{.Config.User}}").split(":")[0] != "0"
            proxy_ip = inspect(f"{ids[n]}-proxy", f'{{{{(index .NetworkSettings.Networks "{ids[n]}-agent").IPAddress}}}}')
            assert proxy == f"proxy=http://{proxy_ip}:{PROXY_PORT}"
            assert leak == "leak=none"
            assert own == "200", result.stdout
            assert other == "403 rc=56", result.stdout

        # A proxy serves only its own agent: bottle 1's agent, put on bottle 0's agent network,
        # is refused by bottle 0's proxy as an unknown client.
        a, b = ids[0], ids[1]
        docker("network", "connect", f"{a}-agent", f"{b}-agent")
        try:
            a_proxy = inspect(f"{a}-proxy", f'{{{{(index .NetworkSettings.Networks "{a}-agent").IPAddress}}}}')
            b_ip_on_a = inspect(f"{b}-agent", f'{{{{(index .NetworkSettings.Networks "{a}-agent").IPAddress}}}}')
            cross = bottle(world, "exec", b, "--", "sh", "-c",
                           f"curl -sS -o /dev/null -w '%{{http_connect}}' -x http://{a_proxy}:{PROXY_PORT} "
                           f"https://{HOSTS[0]}/; echo \" rc=$?\"")
            assert cross.stdout.strip() == "403 rc=56", cross.stdout + cross.stderr
        finally:
            docker("network", "disconnect", "--force", f"{a}-agent", f"{b}-agent", check=False)
        deadline = time.monotonic() + 10
        while True:
            a_log = [json.loads(line) for line in Path(rows[a]["egress_log"]).read_text().splitlines()
                     if line.startswith("{")]
            refused = [line for line in a_log if line.get("client") == b_ip_on_a]
            if refused or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert refused and refused[0]["decision"] == "block"
        assert refused[0]["reason"] == f"client {b_ip_on_a} is not this bottle's agent"
        # ps counts what the egress log says: bottle 2 made its two requests, one blocked.
        counted = {row["id"]: (row["requests"], row["blocked"]) for row in ps_json(world)["bottles"]}
        lines = [json.loads(x) for x in Path(rows[ids[2]]["egress_log"]).read_text().splitlines() if x.startswith("{")]
        requests = [x for x in lines if "method" in x and x["method"] != "WS"]
        assert counted[ids[2]] == (len(requests), 1) and len(requests) >= 2

        # A scanner that stops is shown; a supervisor that is SIGKILLed shows as dead, not running.
        docker("stop", "--time", "0", f"{ids[6]}-pipelock")
        supervisor = rows[ids[7]]["supervisor"]["pid"]
        os.kill(supervisor, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            now = {row["id"]: row for row in ps_json(world)["bottles"]}
            if now[ids[7]]["state"] == "dead" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert now[ids[6]]["status"] == "running (scanner down)"
        assert now[ids[7]]["status"] == "dead (run `bottle cleanup`)"
        # ...and `bottle cleanup` agrees (dry run: other suites' leftovers are not ours to remove).
        cleanup = bottle(world, "cleanup", "--dry-run")
        assert f"would remove container {ids[7]}-agent" in cleanup.stdout, cleanup.stdout
        assert f"skipping container {ids[6]}-agent: its bottle {ids[6]} is still running" in cleanup.stdout

        # stop --all: every bottle of this state directory, torn down; the dead one's objects removed directly.
        stopping = time.monotonic()
        stopped = bottle(world, "stop", "--all")
        print(f"stop --all took {time.monotonic() - stopping:.1f} s")
        assert stopped.returncode == 0, stopped.stderr
        assert sorted(stopped.stdout.split()) == sorted(ids)
        assert f"the process running {ids[7]} is gone; removing its objects directly" in stopped.stderr
        for bottle_id in ids:
            assert leftovers(bottle_id) == [], bottle_id
        assert ps_json(world)["bottles"] == []
        ended = {row["id"]: row for row in ps_json(world, "-a")["bottles"]}
        assert all(ended[i]["state"] == "exited" for i in ids)
        assert ended[ids[0]]["exit_code"] == 128 + signal.SIGTERM

        # exec into a stopped bottle is refused, clearly.
        refused_exec = bottle(world, "exec", ids[0], "--", "id")
        assert refused_exec.returncode != 0
        assert f"{ids[0]} is not running (exited (143)); exec needs a running bottle" in refused_exec.stderr
    finally:
        if any(leftovers(bottle_id) for bottle_id in ids):
            if len(ids) > 1:
                docker("network", "disconnect", "--force", f"{ids[0]}-agent", f"{ids[1]}-agent", check=False)
            bottle(world, "stop", "--all")  # this test's state directory only


def test_an_agent_that_exits_tears_its_bottle_down_and_wait_returns_its_code(world):
    manifest = write_manifest(world, 0, name="selfexit")
    run = bottle(world, "start", "-d", str(manifest), "--", "sh", "-c",
                 "echo out-marker; echo err-marker >&2; sleep 3; exit 7")
    returned = time.monotonic()
    assert run.returncode == 0, run.stderr
    bottle_id = run.stdout.strip()
    try:
        assert leftovers(bottle_id) != []  # it runs
        waited = bottle(world, "wait", bottle_id[:-2])
        assert (waited.returncode, waited.stdout) == (7, "7\n"), waited.stderr
        # The agent exited 3 s after start returned: within 5 s after that nothing is left.
        while leftovers(bottle_id):
            assert time.monotonic() - returned < 3 + 5, leftovers(bottle_id)
            time.sleep(0.2)
        gone = time.monotonic() - returned - 3
        print(f"torn down {gone:.1f} s after the agent exited")
        (row,) = [r for r in ps_json(world, "-a")["bottles"] if r["id"] == bottle_id]
        assert (row["state"], row["exit_code"], row["status"]) == ("exited", 7, "exited (7)")
        logs = bottle(world, "logs", bottle_id, "--agent")
        # stdout and stderr both, each as written (docker exec relays the two streams apart, so
        # their order against each other is not kept).
        assert logs.returncode == 0 and sorted(logs.stdout.splitlines()) == ["err-marker", "out-marker"], logs
        again = bottle(world, "wait", "selfexit")
        assert again.returncode == 7
        refused = bottle(world, "exec", bottle_id, "--", "id")
        assert refused.returncode != 0 and "exec needs a running bottle" in refused.stderr
    finally:
        if leftovers(bottle_id):
            bottle(world, "stop", bottle_id)


def test_a_detached_start_that_fails_says_why_and_leaves_nothing(world):
    manifest = write_manifest(world, 1, name="broken")
    missing_net = f"bottle-test-no-such-network-{uuid.uuid4().hex[:6]}"
    manifest.write_text(manifest.read_text().replace(world["upstream"].network, missing_net))
    run = bottle(world, "start", "-d", str(manifest), "--", "sleep", "600")
    assert run.returncode == 5, run.stderr
    assert run.stdout == ""
    assert f"Error: the Docker network '{missing_net}' named by docker.egress_network does not exist" in run.stderr
    (row,) = [r for r in ps_json(world, "-a")["bottles"] if r["name"] == "broken"]
    assert row["state"] == "failed" and missing_net in row["error"]
    assert leftovers(row["id"]) == []


def test_detached_on_either_engine(engine, manifest, tmp_path):
    """start -d, exec, ps and stop on Docker and on rootful Podman (the conftest's upstream)."""
    from tests.integration.conftest import AGENT_RULES

    env = bottle_env({**engine.env, "XDG_STATE_HOME": str(tmp_path / "state")})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bottle", *args], capture_output=True, text=True, env=env,
                              timeout=240, stdin=subprocess.DEVNULL, cwd=tmp_path)

    started = run("start", "-d", str(manifest(AGENT_RULES, name="either")), "--", "sleep", "600")
    assert started.returncode == 0, started.stderr
    bottle_id = started.stdout.strip()
    try:
        probe = run("exec", "either", "--", "sh", "-c",
                    "curl -sS -o /dev/null -w '%{http_code}' https://api.anthropic.com/")
        assert (probe.returncode, probe.stdout) == (0, "200"), probe.stderr
        (row,) = json.loads(run("ps", "--format", "json").stdout)["bottles"]
        assert (row["id"], row["status"]) == (bottle_id, "running")
        assert row["components"] == {"agent": "running", "proxy": "running", "scanner": "healthy"}
        stopped = run("stop", bottle_id)
        assert (stopped.returncode, stopped.stdout) == (0, bottle_id + "\n"), stopped.stderr
        assert leftovers(bottle_id, engine) == []
    finally:
        if leftovers(bottle_id, engine):
            run("stop", "--all")


def test_a_foreground_bottle_is_listed_and_stopped_like_a_detached_one(world):
    manifest = write_manifest(world, 2, name="fg")
    env = bottle_env({"XDG_STATE_HOME": str(world["state"]), "BOTTLE_DOCKER": DOCKER})
    foreground = subprocess.Popen([sys.executable, "-m", "bottle", "start", str(manifest), "--", "sleep", "600"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  cwd=world["dir"], text=True)
    bottle_id = None
    try:
        deadline = time.monotonic() + 120
        while True:
            rows = [r for r in ps_json(world)["bottles"] if r["name"] == "fg"]
            if rows and rows[0]["state"] == "running":
                break
            assert foreground.poll() is None and time.monotonic() < deadline, rows
            time.sleep(0.5)
        (row,) = rows
        bottle_id = row["id"]
        assert (row["detached"], row["agent_output"], row["supervisor"]["pid"]) == (False, None, foreground.pid)
        stopped = bottle(world, "stop", "fg")
        assert (stopped.returncode, stopped.stdout) == (0, bottle_id + "\n"), stopped.stderr
        assert foreground.wait(timeout=10) == 128 + signal.SIGTERM
        assert f"bottle: SIGTERM received, tearing down {bottle_id}" in foreground.stderr.read()
        assert leftovers(bottle_id) == []
        refused = bottle(world, "logs", "fg", "--agent")
        assert refused.returncode == 1 and f"{bottle_id} ran in the foreground" in refused.stderr
    finally:
        if foreground.poll() is None:
            foreground.terminate()
            foreground.wait(timeout=60)
