"""The watcher that notices a scanner or proxy dying mid-run, fed a fake engine's answers."""

from __future__ import annotations

import json

import pytest

from bottle.backend.docker.watch import GONE, Component, ExitCodes, Observation, StopBottle, Watcher, parse_inspect

UP = Observation(status="running", started_at="t0", health="healthy")


def obs(status="running", started="t0", restarts=0, exit_code=0, health="healthy"):
    return Observation(status=status, exit_code=exit_code, started_at=started, restart_count=restarts, health=health)


def kinds(events):
    return [(e.kind, e.exit_code) if e.kind == "died" else e.kind for e in events]


def test_a_crash_then_a_healthy_restart():
    c = Component("scanner", UP, needs_health=True)
    assert kinds(c.observe(UP)) == []
    assert kinds(c.observe(obs("restarting", exit_code=137, restarts=1))) == [("died", 137)]
    assert kinds(c.observe(obs("restarting", exit_code=137, restarts=1))) == []
    # Running again but not healthy yet: still down.
    assert kinds(c.observe(obs(started="t1", restarts=1, health="starting"))) == []
    assert kinds(c.observe(obs(started="t1", restarts=1))) == ["ready"]
    assert kinds(c.observe(obs(started="t1", restarts=1))) == []  # ready is said once
    c.back()
    assert c.up and kinds(c.observe(obs(started="t1", restarts=1))) == []


def test_a_restart_between_two_looks_is_still_a_death():
    c = Component("proxy", UP, needs_health=False)
    assert kinds(c.observe(obs(started="t1", restarts=1, exit_code=0))) == [("died", None), "ready"]


def test_podman_shows_exited_until_its_cleanup_restarts_it():
    c = Component("scanner", UP, needs_health=True)
    assert kinds(c.observe(obs("exited", exit_code=137))) == [("died", 137)]
    assert kinds(c.observe(obs(started="t1", restarts=1, health=None))) == ["ready"]


def test_a_failed_restore_is_retried_on_the_next_look():
    c = Component("proxy", UP, needs_health=False)
    c.observe(obs("exited", exit_code=137))
    assert kinds(c.observe(obs(started="t1", restarts=1))) == ["ready"]
    c.retry()
    assert kinds(c.observe(obs(started="t1", restarts=1))) == ["ready"]


def test_a_removed_container_is_said_once():
    c = Component("scanner", UP, needs_health=True)
    assert kinds(c.observe(GONE)) == [("died", None), "gone"]
    assert kinds(c.observe(GONE)) == []


def test_parse_inspect_reads_both_engines_names_and_health():
    docker = "/b-pipelock\t" + json.dumps({"Status": "running", "ExitCode": 0, "StartedAt": "t",
                                           "Health": {"Status": "healthy"}}) + "\t2"
    podman = "b-proxy\t" + json.dumps({"Status": "exited", "ExitCode": 137, "StartedAt": "u"}) + "\t0"
    found = parse_inspect(docker + "\n" + podman + "\nError: no such container\n")
    assert found == {
        "b-pipelock": Observation(status="running", exit_code=0, started_at="t", restart_count=2, health="healthy"),
        "b-proxy": Observation(status="exited", exit_code=137, started_at="u", restart_count=0, health=None),
    }


class FakeEngine:
    def __init__(self):
        self.state = {"s": UP, "p": UP}

    def inspect(self, names):
        return {n: self.state[n] for n in names if self.state.get(n) is not None}


def make_watcher(engine, restore=lambda: None):
    said: list[str] = []
    w = Watcher(bottle_id="bottle-x-1", scanner="s", proxy="p", inspect=engine.inspect, restore_proxy=restore,
                say=said.append)
    first = engine.inspect(["s", "p"])
    w.components = {"scanner": Component("scanner", first["s"], needs_health=True),
                    "proxy": Component("proxy", first["p"], needs_health=False)}
    return w, said


def test_the_user_hears_that_the_scanner_died_and_that_it_is_back():
    engine = FakeEngine()
    w, said = make_watcher(engine)
    engine.state["s"] = obs("restarting", exit_code=137, restarts=1)
    w.poll()
    assert said == ["the scanner (pipelock) of bottle-x-1 died (exit code 137); egress is blocked until it is back"]
    engine.state["s"] = obs(started="t1", restarts=1)
    w.poll()
    assert said[1:] == ["the scanner (pipelock) of bottle-x-1 is back; egress resumes"]


def test_a_restarted_proxy_gets_its_files_before_it_is_said_to_be_back():
    engine = FakeEngine()
    restored = []
    attempts = iter([RuntimeError("the proxy did not start serving"), None])

    def restore():
        failure = next(attempts)
        if failure:
            raise failure
        restored.append(True)

    w, said = make_watcher(engine, restore)
    w.stopping.wait = lambda *_: False  # no pause between retries in the test
    engine.state["p"] = obs("exited", exit_code=137)
    w.poll()
    engine.state["p"] = obs(started="t1", restarts=1)
    w.poll()
    w.poll()
    assert said == [
        "the egress proxy of bottle-x-1 died (exit code 137); the agent has no way out until it is back",
        "the egress proxy of bottle-x-1 runs again but could not be given back its policy: "
        "the proxy did not start serving; egress stays blocked, retrying",
        "the egress proxy of bottle-x-1 is back; egress resumes",
    ]
    assert restored == [True]


def test_a_restore_that_stops_the_bottle_ends_the_watch():
    engine = FakeEngine()

    def restore():
        raise StopBottle()

    w, said = make_watcher(engine, restore)
    engine.state["p"] = obs(started="t1", restarts=1)
    w.poll()
    assert w.stopping.is_set()
    assert said == ["the egress proxy of bottle-x-1 died (unknown exit code); the agent has no way out until it is back"]


def test_nothing_is_said_while_everything_runs():
    engine = FakeEngine()
    w, said = make_watcher(engine)
    for _ in range(3):
        w.poll()
    assert said == []


def test_death_events_of_both_engines_give_the_exit_code():
    from bottle.backend.docker.watch import ExitCodes, parse_die_event

    docker = json.dumps({"status": "die", "id": "abc", "Actor": {"Attributes": {"name": "b-pipelock", "exitCode": "137"}}})
    podman = json.dumps({"Name": "b-proxy", "Status": "died", "ContainerExitCode": 137, "Type": "container"})
    assert parse_die_event(docker) == ("b-pipelock", 137)
    assert parse_die_event(podman) == ("b-proxy", 137)
    assert parse_die_event(json.dumps({"status": "start", "Actor": {"Attributes": {"name": "x"}}})) is None
    codes = ExitCodes()
    codes.feed([docker, "not json"])
    assert codes.get("b-pipelock", wait=0) == 137
    assert codes.get("b-pipelock", wait=0) is None


def test_an_idle_watcher_looks_rarely_and_at_once_when_the_engine_reports_a_death():
    import threading
    import time

    engine = FakeEngine()
    looks = []
    said: list[str] = []
    looked = threading.Event()

    def inspect(names):
        looks.append(time.monotonic())
        looked.set()
        return engine.inspect(names)

    codes = ExitCodes()
    w = Watcher(bottle_id="bottle-x-1", scanner="s", proxy="p", inspect=inspect, restore_proxy=lambda: None,
                say=said.append, exit_code=codes.get, interval=0.05, idle_interval=30)
    codes.on_death = w.wake
    w.start()
    try:
        looked.clear()
        time.sleep(0.3)  # both up: no look for the idle interval (30 s)
        assert len(looks) == 1  # start's first look only
        engine.state["s"] = obs("restarting", exit_code=137, restarts=1)
        woken = time.monotonic()
        codes.feed([json.dumps({"status": "die", "Actor": {"Attributes": {"name": "s", "exitCode": "137"}}})])
        assert looked.wait(2) and looks[1] - woken < 1
        deadline = time.monotonic() + 2
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said == ["the scanner (pipelock) of bottle-x-1 died (exit code 137); egress is blocked until it is back"]
        # While it is down the watcher looks often (interval), so its return is seen soon.
        engine.state["s"] = obs(started="t1", restarts=1)
        deadline = time.monotonic() + 2
        while len(said) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said[1] == "the scanner (pipelock) of bottle-x-1 is back; egress resumes"
    finally:
        w.stop()


def test_an_exit_code_only_the_events_know_is_said():
    engine = FakeEngine()
    said: list[str] = []
    w = Watcher(bottle_id="bottle-x-1", scanner="s", proxy="p", inspect=engine.inspect, restore_proxy=lambda: None,
                say=said.append, exit_code=lambda name: 137 if name == "s" else None)
    w.components = {"scanner": Component("scanner", UP, needs_health=True),
                    "proxy": Component("proxy", UP, needs_health=False)}
    engine.state["s"] = obs(started="t1", restarts=1, exit_code=0)
    w.poll()
    assert said[0] == "the scanner (pipelock) of bottle-x-1 died (exit code 137); egress is blocked until it is back"


def test_a_restarted_proxy_is_followed_from_its_start_on_either_engine():
    from bottle.backend.docker.backend import _unix_time

    # Docker reports RFC 3339, Podman Go's default format; `logs --since` takes seconds either way.
    assert _unix_time("2026-12-02T10:59:44.808936814Z") == "1796209184.808936814"
    assert _unix_time("2026-12-02 10:59:44.808936814 +0000 UTC") == "1796209184.808936814"
    assert _unix_time("2026-12-02 11:59:44.5 +0100 CET") == "1796209184.500000000"


def _live_backend(tmp_path):
    from pathlib import Path

    from bottle.backend.docker.backend import DockerBackend, _Live
    from bottle.backend.docker.engine import Engine
    from bottle.launch.secrets import make_secrets
    from bottle.manifest import load_manifest
    from bottle.plan import build_plan

    example = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    backend = DockerBackend(env=env, engine=Engine(name="docker"))
    plan = backend.plan(build_plan(load_manifest(example), env={}, run_id="abc123"))
    secrets = make_secrets(plan.bottle.bottle_id, plan.bottle.egress.token_refs)
    live = _Live(plan=plan, secrets=secrets, agent_ip="10.0.0.3", proxy_ip="10.0.0.2", scanner="s",
                 scanner_host="pipelock")
    return backend, live, env


def test_a_restarted_proxy_gets_the_policy_of_the_last_reload_with_its_own_secrets(tmp_path):
    from bottle.mitm.policy import parse_policy
    from bottle.reload import save_update, update_for

    backend, live, env = _live_backend(tmp_path)
    update = update_for(live.plan.bottle)
    update["allow"].append({**update["allow"][0], "id": "egress.allow[9]", "host": "added.example.org"})
    save_update(live.plan.bottle.bottle_id, update, env)
    files = backend._proxy_files(live)
    policy = parse_policy(files["policy.json"].decode())
    assert [r.host for r in policy.allow][-1] == "added.example.org"
    assert dict(policy.placeholders) == live.secrets.placeholders
    assert policy.scanner.token == live.secrets.scanner_token
    assert (policy.listen.host, policy.clients) == ("10.0.0.2", ("10.0.0.3",))
    assert files["mitmproxy-ca.pem"] == live.secrets.ca.mitmproxy_pem


def test_a_proxy_back_on_another_address_stops_the_bottle(tmp_path, monkeypatch):
    import signal as signals

    from bottle.backend.base import RunningBottle

    backend, live, _ = _live_backend(tmp_path)
    monkeypatch.setattr(backend, "_address", lambda container, network: "10.0.0.9")
    delivered, killed, said = [], [], []
    monkeypatch.setattr(backend, "_deliver_to_proxy", lambda *a, **k: delivered.append(a))
    monkeypatch.setattr("os.kill", lambda pid, sig: killed.append(sig))
    running = RunningBottle(bottle_id="bottle-claude-abc123", agent="a", proxy="p", scanner="s", addresses={})
    with pytest.raises(StopBottle):
        backend._restore_proxy(running, live, said.append)
    assert killed == [signals.SIGTERM] and delivered == []
    assert said == ["the egress proxy of bottle-claude-abc123 came back with another address on the agent network "
                    "(10.0.0.2 → 10.0.0.9), which the agent's proxy settings do not name; stopping the bottle"]
