"""The plan built from the example manifest, the Docker plan's hardening on Docker and
Podman, and the dry-run JSON contract."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from bottle.backend.docker.plan import create_argv, docker_plan, network_create_argv, run_argv
from bottle.launch.capture import ReportError, parse_report, ruleset
from bottle.launch.policy_file import render_policy
from bottle.manifest import load_manifest
from bottle.mitm.policy import AllowRule, CapturedPort, Route, Transparent, parse_policy
from bottle.plan import WorkspaceOwner, build_plan
from bottle.backend.docker.preflight import render_preflight

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "claude.yaml"
GOLDEN = {
    "docker": Path(__file__).parent / "golden" / "dry-run-claude.json",
    "podman": Path(__file__).parent / "golden" / "dry-run-claude-podman.json",
    "transparent": Path(__file__).parent / "golden" / "dry-run-claude-transparent.json",
}


def example_plan(env=None):
    # The repository checked out by uid 1000, as on a developer's machine.
    return build_plan(load_manifest(EXAMPLE), env=env or {}, run_id="abc123",
                      stat_workspace=lambda path: WorkspaceOwner(uid=1000, gid=1000, mode=0o755))


def test_example_plan():
    plan = example_plan()
    assert plan.bottle_id == "bottle-claude-abc123"
    assert plan.agent.command == ("claude",)
    assert plan.agent.workspace == str(ROOT)
    assert plan.egress.allow[0] == AllowRule(
        id="egress.allow[0]", host="api.anthropic.com", methods=("GET", "POST"), paths=("/v1/", "/api/"),
        ports=(443,), private_upstream=False, scan_body=True,
    )
    assert plan.egress.routes == (
        Route(
            id="egress.routes[0]", host="api.anthropic.com", methods=None, paths=("/v1/", "/api/claude_code/"),
            scheme="header",
            header="x-api-key", username=None, token_ref="ANTHROPIC_API_KEY",
        ),
    )
    assert plan.egress.present_token_refs == frozenset()
    assert plan.missing_credentials == ("ANTHROPIC_API_KEY",)


def test_plan_records_presence_of_credentials_never_values():
    plan = example_plan(env={"ANTHROPIC_API_KEY": "sk-ant-api03-secret-value"})
    assert plan.egress.present_token_refs == {"ANTHROPIC_API_KEY"}
    assert plan.missing_credentials == ()
    assert "sk-ant-api03-secret-value" not in repr(plan)
    assert "sk-ant-api03-secret-value" not in json.dumps(docker_plan(plan).to_dict())


def test_command_after_double_dash_overrides_manifest():
    plan = build_plan(load_manifest(EXAMPLE), env={}, run_id="abc123", command=("claude", "-p", "fix it"))
    assert plan.agent.command == ("claude", "-p", "fix it")


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_agent_container_is_hardened(engine):
    agent = docker_plan(example_plan(), engine).container("agent")
    argv = create_argv(agent)
    for flag in (["--cap-drop", "ALL"], ["--security-opt", "no-new-privileges"], ["--user", "1000:1000"],
                 ["--pids-limit", "1024"], ["--memory", "4g"], ["--memory-swap", "4g"], ["--cpus", "2"],
                 ["--dns", "<proxy-ip>"]):
        assert _contains(argv, flag), flag
    assert "--privileged" not in argv
    assert not any("docker.sock" in a for a in argv)
    assert not any(a.startswith("type=bind,source=/,") for a in argv)
    env = {v.name: v.value for v in agent.env}
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://<proxy-ip>:8080"
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert env["ANTHROPIC_API_KEY"] == "<placeholder:ANTHROPIC_API_KEY>"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"):
        assert env[name] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["NODE_EXTRA_CA_CERTS"] == "/usr/local/share/ca-certificates/bottle-egress-ca.crt"


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_proxy_gets_credentials_by_name_only_and_cannot_route(engine):
    proxy = docker_plan(example_plan(env={"ANTHROPIC_API_KEY": "sk-ant-x"}), engine).container("proxy")
    argv = create_argv(proxy)
    assert _contains(argv, ["--env", "ANTHROPIC_API_KEY"])
    assert not any("sk-ant-x" in a for a in argv)
    assert _contains(argv, ["--sysctl", "net.ipv4.ip_forward=0"])
    assert _contains(argv, ["--cap-drop", "ALL"]) and "--read-only" in argv
    assert _contains(argv, ["--user", "10001:10001"])


def test_networks_are_internal_without_gateway_and_never_ipv6():
    dplan = docker_plan(example_plan())
    agent_net, scanner_net, egress_net = dplan.networks
    for net in (agent_net, scanner_net):
        assert net.internal
        assert dict(net.options) == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert not egress_net.internal
    assert dplan.container("agent").network == agent_net.name
    assert dplan.container("pipelock").network == scanner_net.name
    assert [n for n, _ in dplan.container("proxy").extra_networks] == [agent_net.name, scanner_net.name]


def test_on_podman_the_internal_networks_have_no_dns_so_no_address_on_the_host():
    dplan = docker_plan(example_plan(), "podman")
    agent_net, scanner_net, egress_net = dplan.networks
    for net in (agent_net, scanner_net):
        assert network_create_argv(net) == [
            "network", "create", "--driver", "bridge", "--internal", "--disable-dns",
            *[a for k, v in net.labels for a in ("--label", f"{k}={v}")], net.name,
        ]
    assert egress_net.dns and not egress_net.internal
    # Nothing is found by name on a network without DNS: no aliases are planned there.
    assert dplan.container("pipelock").alias is None
    assert dplan.container("proxy").extra_networks == ((agent_net.name, None), (scanner_net.name, None))


def test_on_podman_the_agent_and_pipelock_have_no_ipv6_and_nothing_writable_but_their_mounts():
    dplan = docker_plan(example_plan(), "podman")
    for role in ("agent", "pipelock"):
        argv = create_argv(dplan.container(role))
        assert _contains(argv, ["--sysctl", "net.ipv6.conf.all.disable_ipv6=1"]), role
        assert _contains(argv, ["--sysctl", "net.ipv6.conf.default.disable_ipv6=1"]), role
    for role in ("proxy", "pipelock"):
        assert "--read-only-tmpfs=false" in create_argv(dplan.container(role)), role
    proxy = create_argv(dplan.container("proxy"))
    assert _contains(proxy, ["--tmpfs", "/run/bottle:rw,noexec,nosuid,size=64m,mode=0700,notmpcopyup,U"])
    assert _contains(proxy, ["--tmpfs", "/tmp:rw,noexec,nosuid,size=64m,notmpcopyup"])


def test_on_docker_nothing_podman_only_is_planned():
    dplan = docker_plan(example_plan())
    argvs = [create_argv(c) for c in dplan.containers] + [network_create_argv(n) for n in dplan.networks]
    for flag in ("--disable-dns", "--read-only-tmpfs=false", "net.ipv6.conf.all.disable_ipv6=1"):
        assert not any(flag in argv for argv in argvs), flag


def test_start_order_and_teardown():
    dplan = docker_plan(example_plan())
    assert dplan.start_order == ("pipelock", "proxy", "agent")
    assert dplan.teardown == (
        ("container", "bottle-claude-abc123-agent"),
        ("container", "bottle-claude-abc123-proxy"),
        ("container", "bottle-claude-abc123-pipelock"),
        ("volume", "bottle-claude-abc123-pipelock-config"),
        ("network", "bottle-claude-abc123-egress"),
        ("network", "bottle-claude-abc123-scanner"),
        ("network", "bottle-claude-abc123-agent"),
    )


def test_existing_egress_network_is_used_not_created_or_removed(write_manifest):
    path = write_manifest("""
        version: 1
        name: demo
        docker: {egress_network: corp-egress}
    """)
    dplan = docker_plan(build_plan(load_manifest(path), env={}, run_id="r1"))
    assert dplan.network("egress").name == "corp-egress"
    assert ("network", "corp-egress") not in dplan.teardown
    assert dplan.container("proxy").network == "corp-egress"


def transparent_plan(plan=None):
    """The example with `egress.capture: transparent`."""
    plan = plan or example_plan()
    return dataclasses.replace(plan, egress=dataclasses.replace(plan.egress, capture="transparent"))


def dry_run_document(engine: str = "docker") -> str:
    plan = transparent_plan() if engine == "transparent" else example_plan()
    text = json.dumps(docker_plan(plan, "docker" if engine == "transparent" else engine).to_dict(), indent=2) + "\n"
    return text.replace(str(ROOT), "<repo>")


@pytest.mark.parametrize("engine", ["docker", "podman", "transparent"])
def test_dry_run_json_matches_golden_file(engine):
    """The dry-run JSON is a contract. If this fails, the change is either a bug or a
    contract change: bump DRY_RUN_SCHEMA_VERSION when a field changes meaning or goes
    away, update docs/dry-run-json.md, then regenerate with BOTTLE_UPDATE_GOLDEN=1.
    `transparent` is the example on Docker with `egress.capture: transparent`."""
    import os

    if os.environ.get("BOTTLE_UPDATE_GOLDEN"):
        GOLDEN[engine].write_text(dry_run_document(engine))
    assert dry_run_document(engine) == GOLDEN[engine].read_text()


def test_the_docker_and_podman_documents_differ_only_in_how_each_engine_isolates():
    docker, podman = (json.loads(dry_run_document(e)) for e in ("docker", "podman"))
    assert (docker["bottle"].pop("engine"), podman["bottle"].pop("engine")) == ("docker", "podman")
    for key in ("networks", "containers"):
        docker.pop(key), podman.pop(key)
    assert docker == podman


def test_dry_run_json_is_versioned_and_never_carries_a_fingerprint_yet():
    document = docker_plan(example_plan()).to_dict()
    assert document["schema_version"] == 2
    assert document["egress"]["mitm"] == {"enabled": True, "ca_fingerprint": None}
    assert document["egress"]["routes"][0]["token_ref"] == "ANTHROPIC_API_KEY"
    assert document["egress"]["routes"][0]["token_present"] is False


def _contains(argv: list[str], pair: list[str]) -> bool:
    return any(argv[i:i + len(pair)] == pair for i in range(len(argv)))


@pytest.fixture
def write_manifest(tmp_path):
    import textwrap

    def write(text):
        p = tmp_path / "m.yaml"
        p.write_text(textwrap.dedent(text))
        return p

    return write


def test_git_and_github_sections_become_plan_data_and_proxy_policy(write_manifest):
    from bottle.launch.policy_file import render_policy
    from bottle.mitm.policy import GithubDeny, GitPolicy, GitRepository, parse_policy

    manifest = load_manifest(write_manifest("""
        version: 1
        name: demo
        egress:
          allow: [{host: github.com}, {host: gitlab.example.com}]
        git:
          repositories:
            - {repo: github.com/Acme/Widgets.git, access: push}
            - {repo: gitlab.example.com/group/sub/tool, access: read}
          push_branches: ["sandbox/*"]
        github:
          deny: [{method: DELETE, path: "/repos/*/*/issues/*/comments/*", reason: no deleting comments}]
    """))
    plan = build_plan(manifest, env={}, run_id="abc123")
    assert plan.git == GitPolicy(
        repositories=(
            plan.git.repositories[0].__class__(id="git.repositories[0]", host="github.com", path="acme/widgets",
                                               access="push"),
            plan.git.repositories[0].__class__(id="git.repositories[1]", host="gitlab.example.com",
                                               path="group/sub/tool", access="read"),
        ),
        protected_branches=("main", "master"), push_branches=("sandbox/*",),
        allow_force_push=False, allow_branch_deletion=False,
    )
    text = render_policy(plan, clients=["172.20.0.3"], listen_host="0.0.0.0", listen_port=8080,
                         scanner_url="http://pipelock:9090/scan", scanner_token="t" * 16, placeholders={},
                         upstream_ca_path=None, dns_host=None)
    policy = parse_policy(text)
    assert policy.git.repositories[1] == GitRepository(id="git.repositories[1]", host="gitlab.example.com",
                                                       path="group/sub/tool", access="read")
    assert policy.git.push_branches == ("sandbox/*",)
    assert policy.github_deny == (
        GithubDeny(id="github.deny[0]", method="DELETE", path="/repos/*/*/issues/*/comments/*", graphql=None,
                   reason="no deleting comments"),)
    assert parse_policy(policy.to_json()) == policy


def test_plan_without_git_renders_null_sections():
    from bottle.launch.policy_file import render_policy

    text = render_policy(example_plan(), clients=["172.20.0.3"], listen_host="0.0.0.0", listen_port=8080,
                         scanner_url="http://pipelock:9090/scan", scanner_token="t" * 16,
                         placeholders={"ANTHROPIC_API_KEY": "p" * 20}, upstream_ca_path=None, dns_host=None)
    assert json.loads(text)["git"] is None and json.loads(text)["github"] is None


# -- transparent capture ------------------------------------------------------------------


def test_capture_is_proxy_unless_the_manifest_says_transparent():
    plan = example_plan()
    assert plan.egress.capture == "proxy" and plan.egress.captured_ports == ()
    assert docker_plan(plan).capture is None


def test_transparent_capture_takes_80_443_and_every_rule_port_each_to_a_listener_of_its_own(write_manifest):
    plan = build_plan(load_manifest(write_manifest("""
        version: 1
        name: demo
        egress:
          capture: transparent
          allow:
            - {host: api.example.com, ports: [443]}
            - {host: git.example.com, ports: [8443, 443, 22]}
    """)), env={}, run_id="abc123")
    assert [(p.port, p.listen) for p in plan.egress.captured_ports] == [
        (22, 15001), (80, 15002), (443, 15003), (8443, 15004)]
    policy = parse_policy(render_policy(plan, clients=["172.20.0.3"], listen_host="172.20.0.2", listen_port=8080,
                                        scanner_url="http://pipelock:9090/scan", scanner_token="t" * 16,
                                        placeholders={}, upstream_ca_path=None, dns_host="172.20.0.2"))
    assert policy.transparent == Transparent(ports=plan.egress.captured_ports, dns_address="198.18.0.1")
    assert policy.transparent.original_port(15004) == 8443


def test_the_capture_helper_has_net_admin_only_in_the_agents_namespace_and_is_shown_exactly():
    dplan = docker_plan(transparent_plan())
    helper = dplan.capture.install
    assert (helper.user, helper.cap_drop, helper.cap_add, helper.network, helper.image) == (
        "0:0", ("ALL",), ("NET_ADMIN",), "container:bottle-claude-abc123-agent", dplan.bottle.proxy_image)
    assert helper.security_opt == ("no-new-privileges",) and helper.read_only and helper.env == ()
    assert run_argv(helper, stdin=True)[:4] == ["run", "--rm", "-i", "--name"]
    assert helper not in dplan.containers  # gone before the agent command: not torn down, not restarted
    text = render_preflight(dplan)
    assert f"    $ docker {shlex.join(run_argv(helper, stdin=True)[0:3])}" in text
    assert "\n    EOF\n" in text and "        tcp dport 443 dnat ip to <proxy-ip>:15002\n" in text
    assert "  capture   transparent: every TCP connection to ports 80, 443 goes to the proxy" in text
    assert "  dns       names the policy allows are answered 198.18.0.1, every other name NXDOMAIN" in text
    assert "read what the capture rejected into the egress log" in text


def test_a_podman_capture_helper_keeps_podmans_read_only_root_bare():
    helper = docker_plan(transparent_plan(), "podman").capture.install
    assert "--read-only-tmpfs=false" in run_argv(helper)


RULESET_PORTS = (CapturedPort(port=80, listen=15001), CapturedPort(port=443, listen=15002))


def test_the_ruleset_redirects_captured_ports_and_dns_and_rejects_everything_else():
    text = ruleset(RULESET_PORTS, proxy_ip="10.0.0.2", proxy_port=8080, dns_port=53)
    rules = [line.strip() for line in text.splitlines()]
    capture = rules[rules.index("chain capture {") + 1:rules.index("chain egress {")]
    assert capture[:6] == [
        "type nat hook output priority -100; policy accept;",
        "fib daddr type local return",
        "ip daddr 10.0.0.2 tcp dport 8080 return",  # proxy-aware clients reach the proxy itself
        "meta l4proto { tcp, udp } th dport 53 dnat ip to 10.0.0.2:53",
        "tcp dport 80 dnat ip to 10.0.0.2:15001",
        "tcp dport 443 dnat ip to 10.0.0.2:15002",
    ]
    egress = rules[rules.index("chain egress {") + 1:]
    assert egress[0] == "type filter hook output priority filter; policy drop;"
    assert "ip daddr 10.0.0.2 tcp dport { 53, 8080, 15001, 15002 } accept" in egress
    assert egress[-5:] == ["meta l4proto tcp reject with tcp reset", "meta l4proto udp reject", "drop", "}", "}"]


@pytest.mark.parametrize("text, message", [
    ("not json", "unexpected nft output (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"),
    ('{"nftables": [{"set": {"elem": [{"elem": {"val": {"concat": ["1.2.3.4"]}}}]}}]}',
     "unexpected nft output (ValueError: not enough values to unpack (expected 3, got 1))"),
])
def test_an_unreadable_capture_report_is_an_error_not_a_guess(text, message):
    with pytest.raises(ReportError) as info:
        parse_report(text)
    assert str(info.value) == message


def test_an_empty_capture_report_has_nothing_to_log():
    assert parse_report('{"nftables": [{"set": {"name": "dropped"}}]}') == []
