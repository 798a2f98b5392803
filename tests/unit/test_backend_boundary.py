"""The backend boundary: the CLI picks a backend in one place, the dry-run prints the
backend's own plan, and errors below the CLI know nothing of click."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from bottle import cli as cli_module
from bottle.backend.docker.plan import create_argv, docker_plan
from bottle.cli import cli, main
from bottle.manifest import load_manifest
from bottle.plan import Resources, build_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "claude.yaml"


def test_errors_and_everything_below_the_cli_import_no_click():
    code = ("import sys, bottle.errors, bottle.run, bottle.plan, bottle.manifest, bottle.backend.docker.backend; "
            "print('click' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_the_manifest_chooses_the_backend_and_the_flag_overrides_it(write_manifest):
    path = write_manifest("version: 1\nname: demo\nbackend: docker\n")
    result = CliRunner().invoke(cli, ["start", "--dry-run", "--format=json", str(path)], env={})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["bottle"]["backend"] == "docker"
    result = CliRunner().invoke(cli, ["start", "--dry-run", "--format=json", "--backend", "docker", str(path)], env={})
    assert json.loads(result.output)["bottle"]["backend"] == "docker"


def test_an_unknown_backend_is_a_usage_error(capsys):
    assert main(["start", "--dry-run", "--backend", "podman", str(EXAMPLE)]) == 2
    assert "Error: Invalid value for '--backend': 'podman' is not" in capsys.readouterr().err


def test_the_dry_run_prints_the_chosen_backends_own_plan(monkeypatch):
    class Plan:
        bottle = None

        def to_dict(self):
            return {"made by": "the fake backend"}

        def render_text(self):
            return "the fake backend's plan\n"

    class Backend:
        def plan(self, bottle):
            Plan.bottle = bottle
            return Plan()

    chosen = []
    monkeypatch.setattr(cli_module, "_backend", lambda flag, manifest_choice, **kw: chosen.append(flag) or Backend())
    runner = CliRunner()
    assert runner.invoke(cli, ["start", "--dry-run", "--backend", "docker", str(EXAMPLE)], env={}).output == (
        "the fake backend's plan\n")
    result = runner.invoke(cli, ["start", "--dry-run", "--format=json", str(EXAMPLE)], env={})
    assert json.loads(result.output) == {"made by": "the fake backend"}
    assert chosen == ["docker", None] and Plan.bottle.name == "claude"


def test_the_plan_keeps_the_manifests_memory_and_docker_writes_it_its_way(write_manifest):
    path = write_manifest("version: 1\nname: demo\nagent:\n  resources: {memory: 2G}\n")
    plan = build_plan(load_manifest(path), env={}, run_id="abc123")
    assert plan.agent.resources.memory == "2G" and plan.agent.resources.memory_bytes == 2 << 30
    argv = create_argv(docker_plan(plan).container("agent"))
    assert argv[argv.index("--memory") + 1] == "2g"
    assert Resources(cpus=1, memory=64 << 20, pids=16).memory_bytes == 64 << 20
    assert Resources(cpus=1, memory="512k", pids=16).memory_bytes == 512 << 10
