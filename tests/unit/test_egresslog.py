"""Reading egress logs as a user meets them: `bottle logs`, the summary after `bottle start`,
and every kind of bad log named by file and line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bottle import egresslog
from bottle.cli import cli, main
from bottle.mitm.logformat import log_line
from bottle.run import run_bottle
from tests.unit.test_run import FakeBackend, example_dplan


def line(**fields) -> str:
    base = dict(time="2026-11-22T03:26:18.123Z", bottle="bottle-claude-3f9a2c", client="172.20.0.3", method="GET",
                scheme="https", host="api.anthropic.com", port=443, path="/v1/models", status=200)
    return json.dumps(log_line(**{**base, **fields}))


LOG = [
    line(method="POST", path="/v1/messages", rule="egress.allow[0]", token_ref="ANTHROPIC_API_KEY", scan="full"),
    line(host="evil.example.net", path="/x", status=403, decision="block", reason="no rule allows host evil.example.net"),
    line(host="evil.example.net", path="/y", status=403, decision="block", reason="no rule allows host evil.example.net"),
    line(host="stats.example.com", port=8443, path="/collect", decision="would_block", rule="egress.allow[1]",
         reason="port 8443 is not allowed for host stats.example.com by egress.allow[1]"),
    json.dumps({"time": "2026-11-22T03:26:19.000Z", "bottle": "b", "client": "172.20.0.3", "protocol": "dns/udp",
                "qname": "example.com.", "qtype": 1, "decision": "block", "reason": "dns is disabled in the bottle"}),
]


@pytest.fixture
def log(tmp_path) -> Path:
    path = tmp_path / "bottle-claude-3f9a2c.jsonl"
    path.write_text("\n".join(LOG) + "\n")
    return path


def test_logs_prints_aligned_columns_without_colour_when_not_a_terminal(log):
    result = CliRunner().invoke(cli, ["logs", str(log)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "TIME          DECISION     STATUS  METHOD  HOST                    PATH          RULE             REASON\n"
        "03:26:18.123  allow        200     POST    api.anthropic.com       /v1/messages  egress.allow[0]  "
        "credential ANTHROPIC_API_KEY injected\n"
        "03:26:18.123  block        403     GET     evil.example.net        /x            -                "
        "no rule allows host evil.example.net\n"
        "03:26:18.123  block        403     GET     evil.example.net        /y            -                "
        "no rule allows host evil.example.net\n"
        "03:26:18.123  would_block  200     GET     stats.example.com:8443  /collect      egress.allow[1]  "
        "port 8443 is not allowed for host stats.example.com by egress.allow[1]\n"
        "03:26:19.000  block        -       DNS     example.com.            type 1        -                "
        "dns is disabled in the bottle\n"
    )


def test_logs_colours_the_decision_on_a_terminal(log):
    result = CliRunner().invoke(cli, ["logs", str(log), "--host", "evil.example.net"], color=True)
    assert "\x1b[31m\x1b[1mblock" in result.output
    assert "\x1b[" not in CliRunner().invoke(cli, ["logs", str(log)]).output


def test_logs_filters_and_passes_json_through_unchanged(log):
    blocked = CliRunner().invoke(cli, ["logs", str(log), "--blocked", "--format", "json"])
    assert blocked.output.splitlines() == [LOG[1], LOG[2], LOG[3], LOG[4]]
    hosts = CliRunner().invoke(cli, ["logs", str(log), "--host", "*.example.net", "--format", "json"])
    assert hosts.output.splitlines() == [LOG[1], LOG[2]]


def test_logs_finds_a_bottle_by_name_and_shows_its_newest_log(tmp_path, log):
    state = tmp_path / "state"
    logs_dir = state / "bottle" / "logs"
    logs_dir.mkdir(parents=True)
    old, new = logs_dir / "bottle-claude-aaaaaa.jsonl", logs_dir / "bottle-claude-bbbbbb.jsonl"
    old.write_text(LOG[1] + "\n")
    new.write_text(LOG[0] + "\n")
    old_time = time.time() - 60
    os.utime(old, (old_time, old_time))
    result = CliRunner().invoke(cli, ["logs", "claude", "--format", "json"], env={"XDG_STATE_HOME": str(state)})
    assert result.exit_code == 0
    assert result.stdout == LOG[0] + "\n"
    assert result.stderr == f"bottle: 2 logs match 'claude'; showing the newest: {new}\n"
    exact = CliRunner().invoke(cli, ["logs", "bottle-claude-aaaaaa", "--format", "json"],
                               env={"XDG_STATE_HOME": str(state)})
    assert exact.stdout == LOG[1] + "\n"


def test_logs_for_an_unknown_bottle_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(["logs", "nope"]) == 8
    assert capsys.readouterr().err == (
        f"Error: no log for 'nope': it is not a file, and no log in {tmp_path}/bottle/logs is named like it\n"
        f"Tip: pass the log's path, or a bottle id from `ls {tmp_path}/bottle/logs`\n"
    )


BAD = [
    pytest.param(LOG[0] + "\n{not json}\n", "2: not a JSON log line: Expecting property name enclosed in double quotes "
                 "at column 2", id="corrupt"),
    pytest.param(LOG[0] + "\n" + LOG[1][:40], "2: not a JSON log line: the line is cut off (was the log copied "
                 "while it was written?)", id="truncated"),
    pytest.param(json.dumps({**json.loads(LOG[0]), "log_format": 3}) + "\n",
                 "1: written in log format 3, newer than this bottle reads (up to 2)\n"
                 "Tip: upgrade bottle to read this log", id="newer-format"),
    pytest.param("[1, 2]\n", "1: expected a JSON object per line, found list", id="not-an-object"),
    pytest.param(json.dumps({**json.loads(LOG[0]), "port": "443"}) + "\n",
                 "1: a request line needs 'port' (an integer); found \"443\"", id="wrong-type"),
    pytest.param(json.dumps({**json.loads(LOG[0]), "decision": "maybe"}) + "\n",
                 "1: decision must be one of allow, block, would_block, found 'maybe'", id="bad-decision"),
    pytest.param(b"\xff\xfe\n", "1: not UTF-8 text (byte 0)", id="not-utf8"),
]


@pytest.mark.parametrize("content, message", BAD)
@pytest.mark.parametrize("command", [["logs"], ["policy", "suggest"], ["policy", "replay"]])
def test_a_bad_log_is_named_by_file_and_line_with_exit_8_and_no_traceback(tmp_path, capsys, content, message,
                                                                         command):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    manifest = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"
    argv = [*command, str(path)] + ([str(manifest)] if command[-1] == "replay" else [])
    assert main(argv) == 8
    err = capsys.readouterr().err
    assert err == f"Error: {path}:{message}\n"
    assert "Traceback" not in err


def test_a_missing_log_file_is_an_error_naming_it(tmp_path, capsys):
    assert main(["policy", "suggest", str(tmp_path / "none.jsonl")]) == 8
    assert capsys.readouterr().err == f"Error: {tmp_path / 'none.jsonl'}: no such log file\n"


def test_follow_prints_lines_as_they_are_written_until_the_bottle_stops(tmp_path):
    path = tmp_path / "live.jsonl"
    seen: list[str] = []
    with egresslog.writing(path):
        assert egresslog.being_written(path)
        follower = threading.Thread(target=egresslog.follow, args=(path, lambda e: seen.append(e["path"])),
                                    kwargs={"poll": 0.01})
        follower.start()
        with open(path, "a") as sink:
            sink.write(LOG[0] + "\n" + LOG[1][:30])  # the second line is still being written
            sink.flush()
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
            assert seen == ["/v1/messages"]
            sink.write(LOG[1][30:] + "\n")
    follower.join(timeout=5)
    assert not follower.is_alive()
    assert seen == ["/v1/messages", "/x"]
    assert not egresslog.being_written(path)


class LoggingBackend(FakeBackend):
    """Writes a proxy log the way the Docker backend does: while the bottle runs."""

    @contextlib.contextmanager
    def follow_egress_log(self, running, path):
        path.write_text("\n".join(LOG) + "\n")
        yield


def test_bottle_start_ends_with_one_summary_line(tmp_path, capsys):
    log = tmp_path / "l.jsonl"
    assert run_bottle(example_dplan(), LoggingBackend(agent=lambda: 0), egress_log=log, env={}) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"bottle: 4 requests, 2 blocked, 1 would_block (most blocked: evil.example.net ×2); "
                       f"log: {log}")
    assert err[-2] == "bottle: torn down"


def test_the_start_mode_flag_overrides_the_manifest_for_one_run():
    example = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"
    result = CliRunner().invoke(cli, ["start", "--dry-run", "--format=json", "--mode", "discover", str(example)])
    assert json.loads(result.output)["egress"]["mode"] == "discover"
    text = CliRunner().invoke(cli, ["start", "--dry-run", "--mode", "discover", str(example)]).output
    assert "Egress (discover: nothing is blocked by these rules" in text


def test_logs_follow_on_a_finished_log_prints_it_and_returns(log):
    result = CliRunner().invoke(cli, ["logs", str(log), "-f", "--blocked"])
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["TIME", "DECISION", "STATUS", "METHOD", "HOST", "PATH", "RULE", "REASON"]
    assert [row.split()[1] for row in rows[1:]] == ["block", "block", "would_block", "block"]


def test_what_the_capture_rejected_shows_as_rows_and_in_the_summary(tmp_path):
    from bottle.launch.capture import Dropped, drop_lines

    dropped = [Dropped(protocol="tcp", address="93.184.216.34", port=22, packets=3),
               Dropped(protocol="icmp", address="93.184.216.34", port=None, packets=1)]
    path = tmp_path / "bottle-claude-3f9a2c.jsonl"
    lines = drop_lines(dropped, bottle="bottle-claude-3f9a2c", client="172.20.0.3")
    path.write_text(LOG[0] + "\n" + "".join(json.dumps(l) + "\n" for l in lines))
    result = CliRunner().invoke(cli, ["logs", "--blocked", str(path)])
    assert result.exit_code == 0, result.output
    reason = "transparent capture: only TCP to captured ports and DNS leave the agent; this was rejected"
    assert [" ".join(row.split()[1:]) for row in result.output.splitlines()[1:]] == [
        f"block - TCP 93.184.216.34:22 (3 packets, rejected by the capture) - {reason}",
        f"block - ICMP 93.184.216.34 (1 packets, rejected by the capture) - {reason}",
    ]
    assert egresslog.summary(egresslog.read_log(path), path) == (
        f"bottle: 1 request, 0 blocked, 0 would_block; the capture rejected 4 packets to 2 destinations; log: {path}")
