"""`bottle reload` on the host: what changes is shown, what cannot change live is refused
(naming it) before anything is sent, and no secret is read or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bottle.backend.docker.backend import DockerBackend, _fixed_running
from bottle.backend.docker.engine import Engine
from bottle.errors import LiveError, ManifestError
from bottle.launch.policy_file import build_policy
from bottle.manifest import load_manifest
from bottle.mitm.reload import merge_update, public_view
from bottle.plan import build_plan, proxy_image
from bottle.reload import describe_changes, reload_bottle, reload_state_path, update_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "claude.yaml"
RUN_ID = "abc123"
BOTTLE_ID = f"bottle-claude-{RUN_ID}"
NEW_RULE = """    - host: new.example.org
      methods: [GET]
      paths: [/v1/]
"""


def inspect_of(dplan) -> dict[str, dict]:
    """What `docker inspect` reports for each role's container of a launched plan."""
    out = {}
    for c in dplan.containers:
        out[c.role] = {
            "Name": "/" + c.name,
            "Config": {"Image": c.image, "User": c.user, "WorkingDir": c.workdir or "",
                       "Env": ["PATH=/usr/bin", *(f"{v.name}={v.value or 'x'}" for v in c.env)]},
            "HostConfig": {"NanoCpus": int((c.cpus or 0) * 1e9),
                           "Memory": dplan.bottle.agent.resources.memory_bytes if c.role == "agent" else 1,
                           "PidsLimit": c.pids},
            "Mounts": [{"Type": m.type, "Source": m.source, "Destination": m.target} for m in c.mounts],
            "NetworkSettings": {"Networks": {n: {} for n in [c.network, *(n for n, _ in c.extra_networks)]}},
        }
    return out


class FakeBackend(DockerBackend):
    """The Docker backend's own planning and comparison, with a bottle running `started`."""

    def __init__(self, started: Path):
        super().__init__(env={}, engine=Engine(name="docker"))
        plan = build_plan(load_manifest(started), env={}, run_id=RUN_ID, proxy_image=proxy_image({}))
        policy = build_policy(plan, clients=["10.0.0.3"], listen_host="10.0.0.2", listen_port=8080,
                              scanner_url="http://pipelock:9090/api/v1/scan", scanner_token="s" * 32,
                              placeholders={ref: f"placeholder-{ref}-0123456789" for ref in plan.egress.token_refs},
                              upstream_ca_path=None, dns_host="10.0.0.2")
        self.policy = policy.to_dict()
        self.fixed = _fixed_running(inspect_of(self.plan(plan)))
        self.sent: list[dict] = []

    def live_bottle(self, ref):
        from bottle.reload import LiveBottle

        assert BOTTLE_ID.startswith(ref)
        return LiveBottle(bottle_id=BOTTLE_ID, proxy=f"{BOTTLE_ID}-proxy", policy=public_view(self.policy),
                          sha256="0" * 64, upstream_ca_sha256=None, fixed=self.fixed)

    def apply_update(self, live, update):
        self.sent.append(update)
        self.policy = merge_update(self.policy, update)
        return {"changed": True, "policy_sha256": "1" * 64, "previous_sha256": "0" * 64}

    def policy_reload_logged(self, live, sha256, timeout=10.0):
        return {"event": "policy_reload", "decision": "allow", "policy_sha256": sha256}


@pytest.fixture
def manifests(tmp_path):
    text = EXAMPLE.read_text()

    def write(name: str, *replacements: tuple[str, str]) -> Path:
        body = text
        for old, new in replacements:
            assert old in body, old
            body = body.replace(old, new, 1)
        path = tmp_path / name
        path.write_text(body)
        return path

    return write


def reload(backend, manifest, tmp_path, **kwargs):
    lines: list[str] = []
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    reload_bottle(backend, "bottle-claude", manifest, env=env, mode=kwargs.get("mode"),
                  dry_run=kwargs.get("dry_run", False), echo=lines.append)
    return lines


ALLOW = ("  allow:\n", "  allow:\n" + NEW_RULE)


def test_an_added_rule_is_shown_sent_and_remembered_without_a_secret(manifests, tmp_path):
    backend = FakeBackend(manifests("started.yaml"))
    lines = reload(backend, manifests("new.yaml", ALLOW), tmp_path)
    assert lines == ["+ allow GET new.example.org /v1/", f"{BOTTLE_ID}: reloaded (policy sha256 111111111111)"]
    (update,) = backend.sent
    assert set(update) == {"mode", "allow", "routes", "git", "github", "scanner"}
    assert update["allow"][0]["host"] == "new.example.org"
    saved = reload_state_path(BOTTLE_ID, {"XDG_STATE_HOME": str(tmp_path / "state")})
    assert json.loads(saved.read_text()) == update
    assert "placeholder-" not in saved.read_text() and "s" * 32 not in saved.read_text()


def test_the_same_policy_sends_nothing(manifests, tmp_path):
    backend = FakeBackend(manifests("started.yaml"))
    assert reload(backend, manifests("same.yaml"), tmp_path) == [f"{BOTTLE_ID}: the policy is unchanged; nothing to reload"]
    assert backend.sent == []


def test_dry_run_shows_the_change_and_sends_nothing(manifests, tmp_path):
    backend = FakeBackend(manifests("started.yaml"))
    lines = reload(backend, manifests("new.yaml", ALLOW, ("mode: enforce", "mode: discover")), tmp_path, dry_run=True)
    assert lines == ["~ egress.mode: enforce → discover", "+ allow GET new.example.org /v1/",
                     f"{BOTTLE_ID}: not reloaded (--dry-run)"]
    assert backend.sent == []


def test_removed_and_changed_rules_are_shown(manifests, tmp_path):
    backend = FakeBackend(manifests("started.yaml"))
    lines = reload(backend, manifests("new.yaml", ("      methods: [GET]\n      ports: [443]\n", ""),
                                      ("methods: [GET, HEAD]", "methods: [GET]")), tmp_path, dry_run=True)
    assert "- allow GET,HEAD api.github.com" in lines
    assert "+ allow GET api.github.com" in lines
    assert "- allow GET codeload.github.com" in lines


@pytest.mark.parametrize("replacement, named", [
    (("image: bottle/agent:0.1.0", "image: bottle/agent:9.9"), "agent image: bottle/agent:0.1.0 → bottle/agent:9.9"),
    (("token_ref: ANTHROPIC_API_KEY", "token_ref: OTHER_KEY"), "credentials (the routes' token_refs): added "
                                                               "OTHER_KEY; removed ANTHROPIC_API_KEY"),
    (("memory: 4g", "memory: 8g"), "agent.resources:"),
    (("workspace: ..", "workspace: ."), "agent.workspace:"),
    (("  # capture: transparent", "  capture: transparent"), "egress.capture: proxy → transparent"),
    (("name: claude", "name: other"), "name: the manifest names bottle 'other'"),
    (('DISABLE_AUTOUPDATER: "1"', 'DISABLE_AUTOUPDATER: "0"'), "agent.env:"),
])
def test_what_is_fixed_at_create_is_refused_by_name_and_nothing_is_sent(manifests, tmp_path, replacement, named):
    backend = FakeBackend(manifests("started.yaml"))
    with pytest.raises(LiveError) as refused:
        reload(backend, manifests("new.yaml", ALLOW, replacement), tmp_path)
    assert named in refused.value.message
    assert "the running policy stays" in refused.value.message
    assert backend.sent == []


def test_the_agent_user_is_planned_from_the_workspace_owner_as_at_start(manifests, tmp_path):
    from bottle.plan import WorkspaceOwner

    backend = FakeBackend(manifests("started.yaml"))  # started as 1000:1000
    lines: list[str] = []
    with pytest.raises(LiveError, match="agent.user: 1000:1000 → 1001:1001"):
        reload_bottle(backend, "bottle-claude", manifests("new.yaml", ALLOW), env={}, mode=None, dry_run=False,
                      echo=lines.append, stat_workspace=lambda path: WorkspaceOwner(uid=1001, gid=1001, mode=0o755))
    assert backend.sent == []


def test_a_broken_manifest_is_refused_before_the_bottle_is_touched(manifests, tmp_path):
    backend = FakeBackend(manifests("started.yaml"))
    with pytest.raises(ManifestError, match="egress.allow"):
        reload(backend, manifests("broken.yaml", ("  allow:\n", "  allow:\n    - hots: x\n")), tmp_path)
    assert backend.sent == []


def test_changes_describe_routes_git_github_and_scanner():
    current = {"mode": "enforce", "allow": [], "routes": [], "git": None, "github": None,
               "scanner": {"mode": "block", "responses": "warn"}}
    update = {
        "mode": "enforce", "allow": [],
        "routes": [{"id": "egress.routes[0]", "host": "api.x.org", "methods": None, "paths": ["/v1/"],
                    "scheme": "bearer", "header": None, "username": None, "token_ref": "X_TOKEN"}],
        "git": {"repositories": [{"id": "git.repositories[0]", "host": "github.com", "path": "o/r", "access": "push"}],
                "protected_branches": ["main"], "push_branches": None, "allow_force_push": False,
                "allow_branch_deletion": False},
        "github": {"deny": [{"id": "github.deny[0]", "method": "POST", "path": "/repos/*/*/merges", "graphql": None,
                             "reason": "no merges"}]},
        "scanner": {"mode": "audit", "responses": "warn"},
    }
    assert describe_changes(current, update) == [
        "+ route X_TOKEN (bearer) for any method api.x.org /v1/",
        "+ git policy",
        "+ git push github.com/o/r",
        "+ github deny POST /repos/*/*/merges",
        "~ scanner.mode: block → audit",
    ]


def test_the_update_is_what_the_policy_file_would_hold():
    plan = build_plan(load_manifest(EXAMPLE), env={}, run_id=RUN_ID)
    policy = build_policy(plan, clients=["10.0.0.3"], listen_host="10.0.0.2", listen_port=8080,
                          scanner_url="http://pipelock:9090/api/v1/scan", scanner_token="s" * 32,
                          placeholders={"ANTHROPIC_API_KEY": "p" * 20}, upstream_ca_path=None,
                          dns_host="10.0.0.2").to_dict()
    assert merge_update(policy, update_for(plan)) == policy


def test_kubernetes_refuses_reload_with_a_clear_message():
    from bottle.backend.kubernetes.backend import KubernetesBackend
    from bottle.errors import NotSupportedError

    backend = KubernetesBackend.__new__(KubernetesBackend)
    with pytest.raises(NotSupportedError, match="not supported by the kubernetes backend"):
        backend.live_bottle("x")
