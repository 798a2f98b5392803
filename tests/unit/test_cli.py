"""The CLI as a user sees it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from click.testing import CliRunner

from bottle import __version__
from bottle.cli import cli, main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "claude.yaml"


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=False)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"bottle, version {__version__}\n"


def test_every_command_has_help():
    for command in ("validate", "schema", "start", "build", "cleanup", "completion", "logs", "reload", "policy",
                    "doctor",
                    "policy suggest", "policy replay"):
        result = invoke(*command.split(), "--help")
        assert result.exit_code == 0 and "Usage: " in result.output, command


def test_validate_example():
    result = invoke("validate", str(EXAMPLE))
    assert result.exit_code == 0
    assert result.output == (
        f"{EXAMPLE}: valid (bottle 'claude', 4 allow rules, 1 credential route, egress mode enforce)\n"
    )


def test_invalid_manifest_exits_3_with_the_problem_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: demo\negress:\n  alow: []\n")
    assert main(["validate", str(bad)]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"Error: {bad}:4: egress.alow: expected one of the keys mode, capture, allow, routes, upstream_ca; "
        "found unknown key 'alow' (did you mean 'allow'?)\n"
    )
    assert "Traceback" not in err


def test_schema_is_json_schema_that_accepts_the_example():
    result = invoke("schema")
    document = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(document)
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), document)
    bad = yaml.safe_load(EXAMPLE.read_text())
    bad["egress"]["alow"] = []
    assert list(jsonschema.Draft202012Validator(document).iter_errors(bad))


def test_dry_run_text_names_what_would_be_created_and_touches_nothing(monkeypatch):
    monkeypatch.setenv("BOTTLE_DOCKER", "/nonexistent/docker")  # any Docker call would fail
    result = CliRunner().invoke(cli, ["start", "--dry-run", str(EXAMPLE)], env={"ANTHROPIC_API_KEY": "sk-ant-zzz"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "egress.routes[0] api.anthropic.com  x-api-key (header) from $ANTHROPIC_API_KEY [present]" in out
    assert "$ docker create --name bottle-claude-" in out
    assert "remove network   bottle-claude-" in out
    assert "sk-ant-zzz" not in out


def test_dry_run_without_an_engine_plans_for_docker_and_says_so(monkeypatch):
    monkeypatch.setenv("BOTTLE_DOCKER", "/nonexistent/docker")
    monkeypatch.delenv("BOTTLE_ENGINE", raising=False)
    result = CliRunner().invoke(cli, ["start", "--dry-run", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "Docker resources (created in this order)\n" \
           "  (no engine answered, so this plan assumes Docker; pass --engine to choose)\n" in result.output


def test_dry_run_on_podman_prints_podmans_commands(monkeypatch):
    monkeypatch.setenv("BOTTLE_DOCKER", "/nonexistent/docker")  # --engine alone decides; nothing runs
    result = CliRunner().invoke(cli, ["start", "--dry-run", "--engine", "podman", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "Podman resources (created in this order)" in result.output
    assert "$ podman network create --driver bridge --internal --disable-dns --label" in result.output
    assert "$ podman create --name bottle-claude-" in result.output
    assert "docker" not in result.output.replace("com.docker", "")


def test_dry_run_json_is_one_document(monkeypatch):
    result = invoke("start", "--dry-run", "--format=json", str(EXAMPLE))
    document = json.loads(result.output)
    assert document["schema_version"] == 2
    assert [c["role"] for c in document["containers"]] == ["pipelock", "proxy", "agent"]
    assert document["egress"]["routes"][0]["token_present"] is False


def test_dry_run_with_command_override():
    result = invoke("start", "--dry-run", "--format=json", str(EXAMPLE), "--", "claude", "-p", "fix the test")
    assert json.loads(result.output)["agent"]["command"] == ["claude", "-p", "fix the test"]


def test_format_json_without_dry_run_is_a_usage_error(tmp_path, capsys):
    assert main(["start", "--format=json", str(EXAMPLE)]) == 2
    assert "--format applies to --dry-run only" in capsys.readouterr().err


def test_bad_base_image_flag(capsys):
    assert main(["build", "--base-image", "ruby=x"]) == 1
    assert capsys.readouterr().err == (
        "Error: --base-image 'ruby=x': expected KIND=IMAGE with KIND one of node, python\n"
    )


def test_completion_script():
    result = invoke("completion", "bash")
    assert result.exit_code == 0 and "_BOTTLE_COMPLETE" in result.output
