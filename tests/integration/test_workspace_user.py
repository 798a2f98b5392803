"""The agent can write its workspace (issue 15): on a real engine, the agent runs as the
workspace's owner, what it writes there is the owner's, and a root-owned workspace is
refused before anything is created (docs/prds/0014-workspace-owner-and-doctor.md).

Runs on Docker and on rootful Podman through the `engine` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.conftest import AGENT_RULES, Engine, bottle_env

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

# What the agent does: say who it is, write into the workspace, and use its HOME the way
# Claude Code does (a settings directory and a file beside it).
AGENT_SCRIPT = (
    'echo "id=$(id -u):$(id -g) home=$HOME"; '
    "echo written-by-the-agent > /workspace/made-by-agent.txt && mkdir -p /workspace/sub && echo wrote; "
    'mkdir -p "$HOME/.claude" && echo "{}" > "$HOME/.claude.json" && touch "$HOME/.claude/settings.json" '
    '&& echo home-writable; '
    "claude --version >/dev/null 2>&1 && echo claude-runs"
)


def test_the_agent_runs_as_the_workspace_owner_and_its_files_are_the_owners(manifest, run_bottle, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o755)
    os.chown(workspace, 1001, 1001)
    run = run_bottle(manifest(AGENT_RULES + "agent:\n  workspace: ws\n"), "sh", "-c", AGENT_SCRIPT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["id=1001:1001 home=/home/bottle", "wrote", "home-writable", "claude-runs"]
    made = workspace / "made-by-agent.txt"
    assert made.read_text() == "written-by-the-agent\n"
    for path in (made, workspace / "sub"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1001, 1001), path


def test_a_root_owned_workspace_mounted_read_only_is_read_not_written(manifest, run_bottle, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o755)
    (workspace / "README").write_text("the code\n")
    path = manifest(AGENT_RULES + "agent:\n  workspace: {path: ws, read_only: true}\n")
    run = run_bottle(path, "sh", "-c", 'id -u; cat /workspace/README; touch /workspace/x 2>&1; echo "rc=$?"')
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == ["1000", "the code"]
    assert "Read-only file system" in lines[2] and lines[3] == "rc=1"
    assert sorted(p.name for p in workspace.iterdir()) == ["README"]


def test_a_root_owned_workspace_is_refused_and_nothing_is_created(manifest, tmp_path, engine: Engine):
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o755)
    assert workspace.stat().st_uid == 0, "the test runs as root, so its directories are root's"
    name = f"wsroot{uuid.uuid4().hex[:6]}"
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n", name=name)
    result = subprocess.run([sys.executable, "-m", "bottle", "start", str(path), "--", "true"], capture_output=True,
                            env=bottle_env(engine.env), stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert stderr == (
        f"Error: {path}: agent.workspace: {workspace} is owned by root, and the agent never runs as root: as the "
        "default user 1000:1000 it could not write there\n"
        f"Tip: make the workspace a user's (e.g. sudo chown -R 1000:1000 {workspace}), or set agent.user to a "
        "non-root UID:GID that may write it, or mount it read-only (agent.workspace: {path: ..., read_only: true})\n"
    )
    prefix = f"bottle-{name}-"
    for listing in (["ps", "-a", "--format", "{{.Names}}"], ["network", "ls", "--format", "{{.Name}}"],
                    ["volume", "ls", "--format", "{{.Name}}"]):
        assert not [n for n in engine(*listing).stdout.decode().split() if n.startswith(prefix)], listing
