"""Operating bottles without an engine: the state file, naming a bottle, what `ps` shows,
`wait`, `stop` and `exec` on ended bottles (docs/prds/0012-operating-bottles.md)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bottle import operations, state
from bottle.cli import cli
from bottle.errors import BottleError, StartError
from bottle.run import run_bottle
from tests.unit.test_run import FakeBackend, example_dplan

NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.timezone.utc)


def record(bottle_id: str, *, name: str = "demo", st: str = state.RUNNING, alive: bool = True, **extra) -> dict:
    r = state.new_record(bottle_id=bottle_id, name=name, manifest="/m/bottle.yaml", backend="docker", engine="docker",
                         command=["sleep", "600"], egress_log=Path("/nonexistent.jsonl"), agent_output=None,
                         detached=True, token_refs=["ANTHROPIC_API_KEY"])
    r["created"] = "2026-12-02T11:55:00Z"
    r["state"] = st
    if not alive:
        r["supervisor"] = dead_process()
    r.update(extra)
    return r


def dead_process() -> dict:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return {"host": socket.gethostname(), "pid": child.pid, "start_time": None}


def invoke(tmp_path, *args):
    return CliRunner().invoke(cli, list(args), env={"XDG_STATE_HOME": str(tmp_path)}, catch_exceptions=False)


# -- the state file --------------------------------------------------------------------------


def test_state_lives_under_xdg_state_home_and_defaults_to_local_state(tmp_path, monkeypatch):
    assert state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "bottle" / "bottles"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state.bottles_dir({}) == tmp_path / ".local" / "state" / "bottle" / "bottles"


def test_a_record_is_written_atomically_and_read_back(tmp_path):
    path = state.write(tmp_path, record("bottle-demo-aaaaaa"))
    assert path == tmp_path / "bottle-demo-aaaaaa.json"
    assert state.read(path)["id"] == "bottle-demo-aaaaaa"
    assert [p.name for p in tmp_path.iterdir()] == ["bottle-demo-aaaaaa.json"]  # no temporary file left
    state.update(tmp_path, "bottle-demo-aaaaaa", state=state.EXITED, exit_code=7)
    assert (state.read(path)["state"], state.read(path)["exit_code"]) == ("exited", 7)


def test_a_failed_write_keeps_the_old_record_and_leaves_no_temporary_file(tmp_path):
    state.write(tmp_path, record("bottle-demo-aaaaaa"))
    broken = record("bottle-demo-aaaaaa", exit_code=object())  # not JSON
    with pytest.raises(TypeError):
        state.write(tmp_path, broken)
    assert state.read(tmp_path / "bottle-demo-aaaaaa.json")["state"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["bottle-demo-aaaaaa.json"]


def test_an_id_is_claimed_once_and_a_claimed_but_unwritten_one_is_not_listed(tmp_path):
    assert state.reserve(tmp_path, "bottle-demo-aaaaaa")
    assert not state.reserve(tmp_path, "bottle-demo-aaaaaa")
    assert state.load_all(tmp_path) == []


def test_the_record_names_token_refs_never_a_value(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-real-secret-value")
    codes = []
    backend = FakeBackend(agent=lambda: 7)
    seen = {}

    def on_running():
        seen.update(state.read(tmp_path / "s" / f"{example_dplan().bottle.bottle_id}.json"))

    code = run_bottle(example_dplan(), backend, egress_log=tmp_path / "l.jsonl", env={}, state_dir=tmp_path / "s",
                      on_running=on_running)
    codes.append(code)
    text = (tmp_path / "s" / "bottle-claude-abc123.json").read_text()
    assert "sk-real-secret-value" not in text and "bottle-placeholder" not in text
    final = json.loads(text)
    assert seen["state"] == "running" and seen["supervisor"]["pid"] == os.getpid()
    assert (final["state"], final["exit_code"], final["ended"] is not None) == ("exited", 7, True)
    assert final["credentials"] == [{"agent_env": "ANTHROPIC_API_KEY", "token_ref": "ANTHROPIC_API_KEY"}]
    assert final["manifest"].endswith("examples/claude.yaml") and final["egress_log"] == str(tmp_path / "l.jsonl")


def test_a_start_that_fails_is_recorded_as_failed_with_the_error(tmp_path):
    def boom():
        raise StartError("the scanner did not become healthy")

    with pytest.raises(StartError):
        run_bottle(example_dplan(), FakeBackend(agent=boom), egress_log=tmp_path / "l.jsonl", env={},
                   state_dir=tmp_path)
    final = state.read(tmp_path / "bottle-claude-abc123.json")
    assert (final["state"], final["error"]) == ("failed", "the scanner did not become healthy")


def test_without_a_state_directory_nothing_is_recorded(tmp_path):
    assert run_bottle(example_dplan(), FakeBackend(), egress_log=tmp_path / "l.jsonl", env={}) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["l.jsonl"]


# -- the supervising process ----------------------------------------------------------------


def test_this_process_is_alive_and_a_dead_one_or_another_host_is_not():
    assert state.process_alive(state.this_process())
    assert not state.process_alive(dead_process())
    assert not state.process_alive({**state.this_process(), "host": "elsewhere"})
    assert not state.process_alive(None)


def test_a_killed_process_nobody_reaped_is_not_alive_for_ps_or_cleanup():
    from bottle.backend.base import owner_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
        assert not state.process_alive({"host": socket.gethostname(), "pid": child.pid})
        assert not owner_alive(f"{socket.gethostname()}:{child.pid}")
        assert owner_alive(f"{socket.gethostname()}:{os.getpid()}")
    finally:
        child.wait()


def test_a_reused_pid_is_not_taken_for_the_supervisor():
    me = state.this_process()
    if me["start_time"] is None:
        pytest.skip("no /proc here")
    assert not state.process_alive({**me, "start_time": me["start_time"] + 1})


# -- naming a bottle ----------------------------------------------------------------------------


RECORDS = [record("bottle-claude-1a2b3c", name="claude"), record("bottle-claude-1a9999", name="claude"),
           record("bottle-codex-77aa00", name="codex")]


@pytest.mark.parametrize("ident, expected", [
    ("bottle-claude-1a2b3c", "bottle-claude-1a2b3c"),   # the id
    ("bottle-claude-1a2", "bottle-claude-1a2b3c"),      # a unique start of it
    ("claude-1a2", "bottle-claude-1a2b3c"),             # without bottle-
    ("codex", "bottle-codex-77aa00"),                   # a name only one bottle has
    ("bottle-co", "bottle-codex-77aa00"),
])
def test_a_bottle_is_named_by_id_prefix_or_unique_name(ident, expected):
    assert state.resolve(ident, RECORDS)["id"] == expected


@pytest.mark.parametrize("ident", ["claude", "bottle-claude-1a", "b"])
def test_an_ambiguous_name_lists_every_match(ident):
    with pytest.raises(BottleError) as e:
        state.resolve(ident, RECORDS)
    assert "matches" in e.value.message and "bottle-claude-1a2b3c" in e.value.message
    assert "bottle-claude-1a9999" in e.value.message


def test_an_unknown_bottle_says_where_it_looked(tmp_path):
    with pytest.raises(BottleError) as e:
        state.resolve("nope", RECORDS, tmp_path)
    assert f"no bottle 'nope' in {tmp_path}" in e.value.message and "bottle ps -a" in e.value.message


# -- what ps shows ----------------------------------------------------------------------------------


HEALTHY = {"agent": "running", "proxy": "running", "pipelock": "healthy"}


def test_ps_checks_the_supervisor_and_the_components(tmp_path):
    log = tmp_path / "egress.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in [
        {"method": "GET", "decision": "allow"}, {"method": "CONNECT", "decision": "block"},
        {"method": "WS", "decision": "allow"}, {"qname": "x.test"}]) + "\n{\"method\": \"GE")  # half-written
    records = [
        record("bottle-a-000001", egress_log=str(log)),
        record("bottle-b-000002"),
        record("bottle-c-000003", alive=False),
        record("bottle-d-000004", st=state.EXITED, exit_code=7),
        record("bottle-e-000005", st=state.STARTING),
    ]
    components = {"bottle-a-000001": HEALTHY, "bottle-b-000002": {**HEALTHY, "pipelock": "exited"}}
    rows = operations.ps_rows(records, components, show_all=False, now=NOW)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("bottle-a-000001", "running"),
        ("bottle-b-000002", "running (scanner down)"),
        ("bottle-c-000003", "dead (run `bottle cleanup`)"),
        ("bottle-e-000005", "starting"),
    ]
    assert (rows[0]["requests"], rows[0]["blocked"]) == (2, 1)
    assert rows[0]["components"] == {"agent": "running", "proxy": "running", "scanner": "healthy"}
    every = operations.ps_rows(records, components, show_all=True, now=NOW)
    assert [r["status"] for r in every if r["id"] == "bottle-d-000004"] == ["exited (7)"]


def test_a_missing_or_unhealthy_proxy_is_shown():
    rows = operations.ps_rows([record("bottle-a-000001")], {"bottle-a-000001": {"agent": "running", "pipelock": "unhealthy"}},
                           show_all=False, now=NOW)
    assert rows[0]["status"] == "running (scanner unhealthy, proxy down)"
    assert rows[0]["problems"] == ["scanner unhealthy", "proxy down"]


def test_ps_table_has_a_header_and_one_aligned_line_per_bottle():
    rows = operations.ps_rows([record("bottle-a-000001"), record("bottle-long-name-000002", name="long-name")],
                           {"bottle-a-000001": HEALTHY, "bottle-long-name-000002": HEALTHY}, show_all=False, now=NOW)
    lines = operations.ps_table(rows, now=NOW).splitlines()
    assert lines[0].split() == ["BOTTLE", "ID", "NAME", "STATE", "AGE", "REQUESTS", "BLOCKED", "COMMAND"]
    assert lines[1].split() == ["bottle-a-000001", "demo", "running", "5m", "0", "0", "sleep", "600"]
    assert lines[0].index("NAME") == lines[1].index(" demo ") + 1 == lines[2].index(" long-name ") + 1


def test_ps_json_is_a_versioned_document(tmp_path, monkeypatch):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    state.write(directory, record("bottle-demo-abcdef", st=state.EXITED, exit_code=0))
    state.write(directory, record("bottle-demo-123456", alive=False, created="2026-12-02T11:56:00Z"))
    result = invoke(tmp_path, "ps", "-a", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["version"] == operations.PS_JSON_VERSION == 1
    first, second = document["bottles"]
    assert set(first) == {"id", "name", "state", "problems", "status", "exit_code", "error", "created", "age_seconds",
                          "command", "requests", "blocked", "detached", "manifest", "backend", "engine", "supervisor",
                          "components", "egress_log", "agent_output", "credentials"}
    assert (first["id"], first["state"], first["exit_code"]) == ("bottle-demo-abcdef", "exited", 0)
    assert (second["state"], second["status"]) == ("dead", "dead (run `bottle cleanup`)")
    assert json.loads(invoke(tmp_path, "ps", "--format", "json").output)["bottles"][0]["id"] == "bottle-demo-123456"


def test_ps_with_no_bottles_prints_the_header_only(tmp_path):
    result = invoke(tmp_path, "ps")
    assert result.exit_code == 0 and result.output.split() == ["BOTTLE", "ID", "NAME", "STATE", "AGE", "REQUESTS",
                                                                "BLOCKED", "COMMAND"]


# -- wait, stop, exec, logs --agent on ended bottles ---------------------------------------------------


def test_wait_on_an_exited_bottle_returns_its_exit_code(tmp_path):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    state.write(directory, record("bottle-demo-abcdef", st=state.EXITED, exit_code=7))
    result = invoke(tmp_path, "wait", "bottle-demo-ab")
    assert (result.exit_code, result.output) == (7, "7\n")


def test_wait_on_a_bottle_whose_supervisor_died_says_so(tmp_path):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    state.write(directory, record("bottle-demo-abcdef", alive=False))
    result = invoke(tmp_path, "wait", "demo")
    assert result.exit_code == 1
    assert "died without recording how the agent ended" in result.output and "bottle stop" in result.output


def test_wait_returns_once_the_record_is_final(tmp_path):
    state.write(tmp_path, record("bottle-demo-abcdef"))
    calls = []

    def sleep(_):
        calls.append(1)
        state.update(tmp_path, "bottle-demo-abcdef", state=state.EXITED, exit_code=3)

    assert operations.wait_final(tmp_path, "bottle-demo-abcdef", sleep=sleep)["exit_code"] == 3 and calls == [1]


def test_exec_into_an_exited_bottle_is_refused_clearly(tmp_path):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    state.write(directory, record("bottle-demo-abcdef", st=state.EXITED, exit_code=0))
    result = invoke(tmp_path, "exec", "demo", "--", "id")
    assert result.exit_code == 1
    assert "bottle-demo-abcdef is not running (exited (0)); exec needs a running bottle" in result.output


def test_stop_needs_bottles_or_all_and_reports_an_already_ended_one(tmp_path):
    assert invoke(tmp_path, "stop").exit_code == 2
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    state.write(directory, record("bottle-demo-abcdef", st=state.EXITED, exit_code=0))
    result = invoke(tmp_path, "stop", "demo")
    assert result.exit_code == 0 and "bottle-demo-abcdef already exited (0)" in result.output
    assert invoke(tmp_path, "stop", "--all").output == ""  # nothing left to stop


def test_stop_of_an_ambiguous_name_stops_nothing_and_lists_the_matches(tmp_path):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    for r in RECORDS:
        state.write(directory, {**r, "state": state.EXITED})
    result = invoke(tmp_path, "stop", "claude")
    assert result.exit_code == 1 and "'claude' matches 2 bottles" in result.output


def test_logs_agent_prints_the_agents_output_and_refuses_a_foreground_bottle(tmp_path):
    directory = state.bottles_dir({"XDG_STATE_HOME": str(tmp_path)})
    out = tmp_path / "agent.log"
    out.write_text("hello from the agent\n")
    state.write(directory, record("bottle-demo-abcdef", st=state.EXITED, exit_code=0, agent_output=str(out)))
    state.write(directory, record("bottle-fg-abcdef", name="fg", st=state.EXITED, exit_code=0))
    assert invoke(tmp_path, "logs", "demo", "--agent").output == "hello from the agent\n"
    assert invoke(tmp_path, "logs", "demo", "--agent", "-f").output == "hello from the agent\n"
    refused = invoke(tmp_path, "logs", "fg", "--agent")
    assert refused.exit_code == 1 and "ran in the foreground" in refused.output



def test_the_new_commands_have_help_and_the_supervisor_is_hidden(tmp_path):
    for command in ("ps", "stop", "wait", "exec", "logs"):
        result = invoke(tmp_path, command, "--help")
        assert result.exit_code == 0 and "Usage: " in result.output, command
    listing = invoke(tmp_path, "--help").output
    assert "_supervise" not in listing and " ps " in listing and " exec " in listing


def test_detach_and_dry_run_do_not_go_together(tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"
    result = invoke(tmp_path, "start", "-d", "--dry-run", str(example))
    assert result.exit_code == 2 and "--detach and --dry-run do not go together" in result.output
    assert not (tmp_path / "bottle").exists()  # no id was claimed


# -- the Docker backend's side, with a fake client ----------------------------------------------------


class ScriptedDocker:
    executable = "/usr/bin/docker"

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def argv(self, args):
        return [self.executable, *args]

    def run(self, args, *, check=True, **kwargs):
        self.calls.append(list(args))
        for prefix, out in self.answers:
            if list(args[:len(prefix)]) == prefix:
                return subprocess.CompletedProcess(args, 0, out.encode(), b"")
        return subprocess.CompletedProcess(args, 0, b"", b"")

    def output(self, args, **kwargs):
        return self.run(args, **kwargs).stdout.decode().strip()


def labels(bottle_id, role):
    return json.dumps({"dev.bottle.bottle": bottle_id, "dev.bottle.role": role})


def test_components_are_read_by_label_and_a_stopped_container_is_not_called_healthy():
    from bottle.backend.docker.backend import DockerBackend

    inspected = "\n".join([
        f"/bottle-a-1-agent\t{labels('bottle-a-1', 'agent')}\trunning\t",
        f"/bottle-a-1-proxy\t{labels('bottle-a-1', 'proxy')}\trunning\t",
        f"/bottle-a-1-pipelock\t{labels('bottle-a-1', 'pipelock')}\texited\thealthy",   # stopped: its last health is stale
        f"/bottle-b-2-pipelock\t{labels('bottle-b-2', 'pipelock')}\trunning\tunhealthy",
        f"/bottle-other-3-agent\t{labels('bottle-other-3', 'agent')}\trunning\t",        # not asked about
    ])
    docker = ScriptedDocker([(["ps"], "c1 c2 c3 c4 c5"), (["inspect"], inspected)])
    found = DockerBackend(docker, env={}).components(["bottle-a-1", "bottle-b-2"])
    assert found == {"bottle-a-1": {"agent": "running", "proxy": "running", "pipelock": "exited"},
                     "bottle-b-2": {"pipelock": "unhealthy"}}
    rows = operations.ps_rows([record("bottle-a-1"), record("bottle-b-2")], found, show_all=False, now=NOW)
    assert [r["status"] for r in rows] == ["running (scanner down)", "running (scanner unhealthy, proxy down, agent down)"]


def test_a_scanner_whose_first_docker_check_is_still_due_is_checked_now():
    """Docker checks the scanner every few seconds (cheap while it runs), so right after a
    start it says "starting": ps runs the image's own check instead of showing a problem."""
    from bottle.backend.docker.backend import DockerBackend

    inspected = f"/bottle-a-1-pipelock\t{labels('bottle-a-1', 'pipelock')}\trunning\tstarting"
    docker = ScriptedDocker([
        (["ps"], "c1"),
        (["inspect", "--type", "container", "--format", "{{json .Config.Healthcheck}}"],
         '{"Test": ["CMD", "/pipelock", "healthcheck"], "Interval": 5000000000}'),
        (["inspect"], inspected),
    ])
    found = DockerBackend(docker, env={}).components(["bottle-a-1"])
    assert found == {"bottle-a-1": {"pipelock": "healthy"}}
    assert ["exec", "bottle-a-1-pipelock", "/pipelock", "healthcheck"] in docker.calls


def test_health_check_commands_run_as_docker_would():
    from bottle.backend.docker.backend import health_test_argv

    assert health_test_argv(["CMD", "/pipelock", "healthcheck"]) == ["/pipelock", "healthcheck"]
    assert health_test_argv(["CMD-SHELL", "curl -f localhost"]) == ["/bin/sh", "-c", "curl -f localhost"]
    assert health_test_argv(["NONE"]) == [] and health_test_argv([]) == []


def test_exec_names_the_agents_user_explicitly_and_passes_no_environment():
    from bottle.backend.docker.backend import DockerBackend

    docker = ScriptedDocker([(["ps"], "f00d"), (["inspect"], "1000:1000 running")])
    argv = DockerBackend(docker, env={}).exec_argv("bottle-a-1", ["sh", "-c", "id"], stdin=True, tty=False)
    assert argv == ["/usr/bin/docker", "exec", "-i", "--user", "1000:1000", "f00d", "sh", "-c", "id"]
    assert ["--filter", "label=dev.bottle.role=agent"] == docker.calls[0][-2:]
    assert not any(a in ("-e", "--env", "--env-file") for a in argv)


def test_exec_into_a_stopped_agent_container_is_refused():
    from bottle.backend.docker.backend import DockerBackend

    docker = ScriptedDocker([(["ps"], "f00d"), (["inspect"], "1000:1000 exited")])
    with pytest.raises(BottleError) as e:
        DockerBackend(docker, env={}).exec_argv("bottle-a-1", ["id"], stdin=True, tty=True)
    assert "the agent container of bottle-a-1 is exited" in e.value.message
