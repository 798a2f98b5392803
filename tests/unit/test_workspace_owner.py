"""Who the agent runs as: agent.user, else the workspace's owner; never root (docs/prds/0014)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bottle import workspace
from bottle.backend.docker.plan import create_argv, docker_plan
from bottle.backend.kubernetes import plan as kp
from bottle.cli import cli, main
from bottle.errors import ManifestError
from bottle.manifest import load_manifest
from bottle.plan import WorkspaceOwner, build_plan
from tests.unit.conftest import REAL_OWNER_OF

RULES = "egress:\n  allow:\n    - host: api.example.com\n"


@pytest.fixture
def bottle_dir(tmp_path: Path):
    """A manifest beside its workspace `ws`, with extra `agent:` lines."""

    def write(agent: str = "workspace: ws") -> Path:
        (tmp_path / "ws").mkdir(exist_ok=True)
        path = tmp_path / "bottle.yaml"
        path.write_text(f"version: 1\nname: demo\nagent:\n  {agent}\n{RULES}")
        return path

    return write


def owned_by(monkeypatch, uid: int, gid: int, mode: int = 0o755) -> None:
    monkeypatch.setattr(workspace, "owner_of", lambda path: WorkspaceOwner(uid=uid, gid=gid, mode=mode))


def dry_run(path: Path, *extra: str):
    return CliRunner().invoke(cli, ["start", "--dry-run", "--engine", "docker", *extra, str(path)], env={},
                              catch_exceptions=False)


def test_a_workspace_owned_by_1001_makes_the_agent_1001_with_a_home_of_its_own(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 1001, 1001)
    path = bottle_dir()
    text = dry_run(path)
    assert text.exit_code == 0, text.output
    assert "  user      1001:1001 (the workspace's owner), all capabilities dropped, no-new-privileges\n" in text.output
    assert "  home      /home/bottle  (its own, for uid 1001, which has no home in the image)\n" in text.output
    assert f"  workdir   /workspace  (host {path.parent / 'ws'} mounted read-write, owned by 1001:1001)\n" \
        in text.output
    document = json.loads(dry_run(path, "--format=json").output)
    assert {k: document["agent"][k] for k in ("user", "user_source", "workspace_owner", "workspace_read_only",
                                               "home")} == {
        "user": "1001:1001", "user_source": "workspace owner", "workspace_owner": "1001:1001",
        "workspace_read_only": False, "home": "/home/bottle"}
    agent = next(c for c in document["containers"] if c["role"] == "agent")
    assert agent["user"] == "1001:1001"
    assert agent["env"]["HOME"] == "/home/bottle"
    argv = agent["create_argv"]
    assert argv[argv.index("--user") + 1] == "1001:1001"
    assert "/home/bottle:rw,nosuid,size=1g,mode=0700,uid=1001,gid=1001" in argv


def test_on_podman_the_home_belongs_to_the_agents_user_too(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 1001, 1001)
    plan = build_plan(load_manifest(bottle_dir()), env={}, run_id="r1", stat_workspace=workspace.owner_of)
    argv = create_argv(docker_plan(plan, "podman").container("agent"))
    assert "/home/bottle:rw,nosuid,size=1g,mode=0700,notmpcopyup,U" in argv


def test_the_image_user_keeps_the_images_home(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 1000, 1000)
    document = json.loads(dry_run(bottle_dir(), "--format=json").output)
    assert document["agent"]["home"] is None
    agent = next(c for c in document["containers"] if c["role"] == "agent")
    assert "HOME" not in agent["env"] and [m["target"] for m in agent["mounts"]] == ["/workspace"]


def test_a_root_owned_workspace_is_refused_with_the_fix(bottle_dir, monkeypatch, capsys):
    owned_by(monkeypatch, 0, 0)
    path = bottle_dir()
    ws = path.parent / "ws"
    for dry in (["--dry-run"], []):
        assert main(["start", *dry, "--engine", "docker", str(path)]) == 3
        assert capsys.readouterr().err == (
            f"Error: {path}: agent.workspace: {ws} is owned by root, and the agent never runs as root: as the "
            "default user 1000:1000 it could not write there\n"
            f"Tip: make the workspace a user's (e.g. sudo chown -R 1000:1000 {ws}), or set agent.user to a non-root "
            "UID:GID that may write it, or mount it read-only (agent.workspace: {path: ..., read_only: true})\n"
        )


def test_a_root_owned_workspace_mounted_read_only_runs_as_the_default_user(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 0, 0)
    path = bottle_dir("workspace: {path: ws, read_only: true}")
    text = dry_run(path)
    assert text.exit_code == 0, text.output
    assert "  user      1000:1000 (the default)," in text.output
    assert f"(host {path.parent / 'ws'} mounted read-only, owned by 0:0)" in text.output
    document = json.loads(dry_run(path, "--format=json").output)
    assert (document["agent"]["user"], document["agent"]["user_source"], document["agent"]["workspace_owner"],
            document["agent"]["workspace_read_only"]) == ("1000:1000", "default", "0:0", True)
    agent = next(c for c in document["containers"] if c["role"] == "agent")
    assert agent["mounts"] == [{"type": "bind", "source": str(path.parent / "ws"), "target": "/workspace",
                                "read_only": True}]
    assert f"type=bind,source={path.parent / 'ws'},target=/workspace,readonly" in agent["create_argv"]


def test_a_root_owned_workspace_anyone_may_write_runs_as_the_default_user(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 0, 0, mode=0o777)
    document = json.loads(dry_run(bottle_dir(), "--format=json").output)
    assert (document["agent"]["user"], document["agent"]["user_source"]) == ("1000:1000", "default")


def test_agent_user_in_the_manifest_wins_over_the_owner(bottle_dir, monkeypatch):
    owned_by(monkeypatch, 0, 0)  # root-owned: agent.user is the fix the refusal names
    text = dry_run(bottle_dir('workspace: ws\n  user: "2000:2000"'))
    assert text.exit_code == 0, text.output
    assert "  user      2000:2000 (agent.user), all capabilities dropped" in text.output
    owned_by(monkeypatch, 1001, 1001)
    document = json.loads(dry_run(bottle_dir('workspace: ws\n  user: "1000:1000"'), "--format=json").output)
    assert (document["agent"]["user"], document["agent"]["user_source"], document["agent"]["workspace_owner"],
            document["agent"]["home"]) == ("1000:1000", "manifest", "1001:1001", None)


def test_agent_user_root_is_refused_even_for_a_root_owned_workspace(bottle_dir, monkeypatch, capsys):
    owned_by(monkeypatch, 0, 0)
    path = bottle_dir('workspace: ws\n  user: "0:0"')
    assert main(["start", "--dry-run", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"Error: {path}:5: agent.user: expected a non-root UID:GID; found string '0:0' (the agent never runs as "
        "root; leave agent.user out to run as the workspace's owner, or chown the workspace to a user and name that "
        "user here)\n"
    )


def test_without_a_workspace_the_agent_is_the_default_user(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(f"version: 1\nname: demo\n{RULES}")
    plan = build_plan(load_manifest(path), env={}, run_id="r1", stat_workspace=workspace.owner_of)
    assert (plan.agent.user, plan.agent.user_source, plan.agent.workspace_owner) == ("1000:1000", "default", None)


def test_the_owner_is_read_from_the_host_directory(bottle_dir, monkeypatch):
    monkeypatch.setattr(workspace, "owner_of", REAL_OWNER_OF)
    path = bottle_dir()
    ws = path.parent / "ws"
    if os.getuid() == 0:
        os.chown(ws, 1001, 1002)
    uid, gid = (1001, 1002) if os.getuid() == 0 else (os.getuid(), os.getgid())
    plan = build_plan(load_manifest(path), env={}, run_id="r1", stat_workspace=workspace.owner_of)
    assert (plan.agent.user, plan.agent.user_source) == (f"{uid}:{gid}", "workspace owner")


def test_a_missing_workspace_is_named(bottle_dir, monkeypatch, capsys):
    monkeypatch.setattr(workspace, "owner_of", REAL_OWNER_OF)
    path = bottle_dir("workspace: nowhere")
    assert main(["start", "--dry-run", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"Error: {path}: agent.workspace: {path.parent / 'nowhere'}: No such file or directory\n"
        "Tip: the workspace is a host directory, relative to the manifest file\n"
    )
    (path.parent / "file").write_text("")
    with pytest.raises(ManifestError, match="file: Not a directory"):
        build_plan(load_manifest(bottle_dir("workspace: file")), env={}, run_id="r1",
                   stat_workspace=workspace.owner_of)


def test_a_misspelt_workspace_option_is_an_error_with_a_suggestion(bottle_dir, capsys):
    path = bottle_dir("workspace: {path: ws, raed_only: true}")
    assert main(["validate", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"Error: {path}:4: agent.workspace.raed_only: expected one of the keys path, read_only; found unknown key "
        "'raed_only' (did you mean 'read_only'?)\n"
    )
    path = bottle_dir("workspace: [ws]")
    assert main(["validate", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"Error: {path}:4: agent.workspace: expected a host directory path, or a mapping with path and read_only; "
        "found a list of 1 item\n"
    )


def test_kubernetes_runs_the_pod_as_agent_user_with_a_home_for_it(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(f'version: 1\nname: demo\nagent:\n  user: "1001:1001"\n{RULES}')
    kplan = kp.kubernetes_plan(build_plan(load_manifest(path), env={}, run_id="r1"), namespace="n", context=None)
    pod = next(o.body for o in kplan.objects if o.kind == "Pod" and o.body["metadata"]["name"].endswith("-agent"))
    security = pod["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (1001, 1001, True)
    container = pod["spec"]["containers"][0]
    assert {"name": "HOME", "value": "/home/bottle"} in container["env"]
    assert {"name": "home", "mountPath": "/home/bottle"} in container["volumeMounts"]
    assert {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}} in pod["spec"]["volumes"]
