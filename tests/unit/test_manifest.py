"""Manifest loading: defaults, and every error path with its message asserted verbatim."""

from __future__ import annotations

import pytest

from bottle.errors import ManifestError
from bottle.manifest import DEFAULT_AGENT_IMAGE, DEFAULT_PIPELOCK_IMAGE, load_manifest
from tests.unit.conftest import MINIMAL


def test_minimal_manifest_gets_every_default(write_manifest):
    manifest = load_manifest(write_manifest(MINIMAL))
    assert manifest.data == {
        "version": 1,
        "name": "demo",
        "agent": {
            "image": DEFAULT_AGENT_IMAGE,
            "command": ["claude"],
            "workdir": "/workspace",
            "env": {},
            "resources": {"cpus": 2, "memory": "4g", "pids": 1024},
        },
        "egress": {
            "mode": "enforce",
            "capture": "proxy",
            "allow": [{"host": "api.example.com", "ports": [443, 80], "private_upstream": False, "scan_body": True,
                       "max_label_entropy": 3.5, "tls": "intercept"}],
            "routes": [],
        },
        "scanner": {"image": DEFAULT_PIPELOCK_IMAGE, "mode": "block", "responses": "warn"},
        "docker": {},
    }


def test_hosts_are_lower_cased_and_trailing_dot_dropped(write_manifest):
    manifest = load_manifest(write_manifest("""
        version: 1
        name: demo
        egress:
          allow:
            - host: api.example.com.
    """))
    assert manifest.data["egress"]["allow"][0]["host"] == "api.example.com"


def errors_of(write_manifest, text: str) -> str:
    path = write_manifest(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.exit_code == 3
    return info.value.message.replace(str(path), "M")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              alow:
                - host: api.example.com
            """,
            "M:4: egress.alow: expected one of the keys mode, capture, allow, routes, upstream_ca; "
            "found unknown key 'alow' (did you mean 'allow'?)",
            id="misspelt-key-did-you-mean",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              routes:
                - host: api.example.com
                  auth:
                    scheme: beerer
                    token_ref: TOKEN
              allow:
                - host: api.example.com
            """,
            "M:7: egress.routes[0].auth.scheme: expected one of bearer, token, basic, header; "
            "found string 'beerer' (did you mean 'bearer'?)",
            id="bad-enum-did-you-mean",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow: [{host: api.example.com}]
              routes:
                - host: api.example.com
                  auth: {}
            """,
            "2 problems in M:\n"
            "M:7: egress.routes[0].auth.scheme: expected a value (one of bearer, token, basic, header); found nothing\n"
            "M:7: egress.routes[0].auth.token_ref: expected a value (an environment variable name such as "
            "ANTHROPIC_API_KEY); found nothing",
            id="empty-auth",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow: [{host: api.example.com}]
              routes:
                - host: api.example.com
                  auth: {scheme: header, token_ref: KEY}
            """,
            "M:7: egress.routes[0].auth.header: expected a header name, because scheme is header; found nothing",
            id="header-scheme-needs-header",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow: [{host: api.example.com}]
              routes:
                - host: other.example.com
                  auth: {scheme: bearer, token_ref: KEY}
            """,
            "M:6: egress.routes[0].host: expected a host that an egress.allow rule allows; "
            "found string 'other.example.com' (add an egress.allow rule for it)",
            id="route-outside-allow",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: 10.0.0.1
            """,
            "M:5: egress.allow[0].host: expected a DNS name (IP addresses are always refused); "
            "found string '10.0.0.1'",
            id="ip-literal-host",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: "exa mple.com"
            """,
            "M:5: egress.allow[0].host: expected a lower-case DNS name such as api.example.com or a *. wildcard "
            "such as *.example.com; found string 'exa mple.com'",
            id="bad-host",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: api.example.com
                  ports: [443, 70000]
            """,
            "M:6: egress.allow[0].ports[1]: expected an integer from 1 to 65535; found number 70000",
            id="bad-port",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: api.example.com
                  paths: [v1/]
            """,
            "M:6: egress.allow[0].paths[0]: expected a path prefix starting with /; found string 'v1/'",
            id="bad-path",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: api.example.com
                  methods: [GET, FETCH]
            """,
            "M:6: egress.allow[0].methods[1]: expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; "
            "found string 'FETCH' (did you mean 'PATCH'?)",
            id="bad-method",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              mode: enforced
            """,
            "M:4: egress.mode: expected one of enforce, discover; found string 'enforced' (did you mean 'enforce'?)",
            id="bad-mode",
        ),
        pytest.param(
            """
            version: 2
            name: demo
            """,
            "M:1: version: expected an integer from 1 to 1; found number 2",
            id="future-version",
        ),
        pytest.param(
            """
            name: demo
            """,
            "M:1: version: expected a value (an integer from 1 to 1); found nothing",
            id="missing-version",
        ),
        pytest.param(
            """
            version: 1
            name: Demo_Bottle
            """,
            "M:2: name: expected a name of lower-case letters, digits and dashes (at most 32); "
            "found string 'Demo_Bottle'",
            id="bad-name",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            agent:
              user: "0:0"
            """,
            "M:4: agent.user: expected a non-root UID:GID; found string '0:0' (the agent never runs as root; "
            "leave agent.user out to run as the workspace's owner, or chown the workspace to a user and name that "
            "user here)",
            id="root-agent",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            agent:
              env:
                HTTPS_PROXY: http://elsewhere:3128
            """,
            "M:5: agent.env.HTTPS_PROXY: expected a variable bottle does not set itself; "
            "found HTTPS_PROXY, which bottle sets to route traffic through the proxy",
            id="reserved-env",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            agent:
              env:
                ANTHROPIC_API_KEY: sk-ant-real
            egress:
              allow: [{host: api.anthropic.com}]
              routes:
                - host: api.anthropic.com
                  auth: {scheme: header, header: x-api-key, token_ref: ANTHROPIC_API_KEY}
            """,
            "M:5: agent.env.ANTHROPIC_API_KEY: expected no value: the agent gets a placeholder for a credential "
            "route's token_ref; found a value for ANTHROPIC_API_KEY",
            id="secret-in-agent-env",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            agent:
              command: claude -p hi
            """,
            "M:4: agent.command: expected a list of strings; found string 'claude -p hi'",
            id="command-not-a-list",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            agent:
              resources: {memory: lots}
            """,
            "M:4: agent.resources.memory: expected a memory size such as 512m or 4g; found string 'lots'",
            id="bad-memory",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            scanner:
              mode: warn
            """,
            "M:4: scanner.mode: expected one of block, audit; found string 'warn'",
            id="bad-scanner-mode",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            name: other
            """,
            "M:3: name: expected each key once; found 'name' again (first on line 2)",
            id="duplicate-key",
        ),
        pytest.param(
            """
            - version: 1
            """,
            "M:1: (top level): expected a mapping with the keys version, name, agent, egress, scanner, git, github, backend, docker, kubernetes; "
            "found a list of 1 item",
            id="not-a-mapping",
        ),
        pytest.param(
            """
            version: 1
            name: [unclosed
            """,
            "M:3: not valid YAML: expected ',' or ']', but got '<stream end>'",
            id="invalid-yaml",
        ),
        pytest.param(
            """
            version: 1
            name: demo
            egress:
              allow:
                - host: api.example.com
                  private_upstream: "yes"
            """,
            "M:6: egress.allow[0].private_upstream: expected true or false; found string 'yes'",
            id="quoted-bool",
        ),
    ],
)
def test_manifest_errors_name_file_line_path_expected_and_found(write_manifest, text, message):
    assert errors_of(write_manifest, text) == message


def test_empty_file_is_an_error(write_manifest):
    assert errors_of(write_manifest, "") == (
        "M: the file is empty; expected a manifest mapping (see `bottle schema`)"
    )


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "nope.yaml")
    assert info.value.message == f"{tmp_path / 'nope.yaml'}: no such file"


def test_python_tags_are_refused(write_manifest):
    message = errors_of(write_manifest, "version: 1\nname: !!python/object/apply:os.system ['true']\n")
    assert message == (
        "M:2: not valid YAML: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed in a manifest"
    )


def test_alias_bombs_are_refused(write_manifest):
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join(f"*a{i-1}" for _ in range(10)) + "]")
    assert errors_of(write_manifest, "\n".join(lines) + "\n") == (
        "M: too many nested or repeated values (YAML aliases?); a manifest is small"
    )


# -- git and github -------------------------------------------------------------------

GIT_BASE = """
version: 1
name: demo
egress: {allow: [{host: github.com}]}
"""


def test_git_section_gets_its_defaults_and_repositories_are_normalised(write_manifest):
    manifest = load_manifest(write_manifest(GIT_BASE + """
git:
  repositories: [{repo: GitHub.com/Acme/Widgets.git, access: push}]
github:
  deny: [{graphql: deleteIssue, reason: no deleting issues}]
"""))
    assert manifest.data["git"] == {
        "repositories": [{"repo": "github.com/acme/widgets", "access": "push"}],
        "protected_branches": ["main", "master"],
        "allow_force_push": False,
        "allow_branch_deletion": False,
    }
    assert manifest.data["github"] == {"deny": [{"graphql": "deleteIssue", "reason": "no deleting issues"}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: github.com/acme/widgets, access: push}]
  alow_force_push: true
""",
            "M:7: git.alow_force_push: expected one of the keys repositories, protected_branches, push_branches, "
            "allow_force_push, allow_branch_deletion; found unknown key 'alow_force_push' (did you mean "
            "'allow_force_push'?)",
            id="git-misspelt-key",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: github.com/acme/widgets, access: rw}]
""",
            "M:6: git.repositories[0].access: expected one of read, push; found string 'rw'",
            id="git-bad-access",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: github.com/widgets, access: read}]
""",
            "M:6: git.repositories[0].repo: expected host/owner/repo such as github.com/acme/widgets; "
            "found string 'github.com/widgets'",
            id="git-repo-without-owner",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: github.com/../widgets, access: read}]
""",
            "M:6: git.repositories[0].repo: expected host/owner/repo such as github.com/acme/widgets; "
            "found string 'github.com/../widgets'",
            id="git-repo-dot-segment",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: gitlab.example.com/group/sub/tool.git, access: read}]
""",
            "M:6: git.repositories[0].repo: expected a repository on a host that an egress.allow rule allows; "
            "found string 'gitlab.example.com/group/sub/tool' (add an egress.allow rule for gitlab.example.com)",
            id="git-host-not-allowed",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories:
    - {repo: github.com/acme/widgets, access: read}
    - {repo: GitHub.com/Acme/Widgets.git, access: push}
""",
            "M:8: git.repositories[1].repo: expected each repository once; found string 'github.com/acme/widgets' "
            "again (first at git.repositories[0])",
            id="git-duplicate-repository",
        ),
        pytest.param(
            GIT_BASE + """
git: {protected_branches: [main]}
""",
            "M:5: git.repositories: expected a value (a list); found nothing",
            id="git-needs-repositories",
        ),
        pytest.param(
            GIT_BASE + """
git:
  repositories: [{repo: github.com/acme/widgets, access: push}]
  push_branches: ["sandbox/ x"]
""",
            "M:7: git.push_branches[0]: expected a branch name or glob such as main or sandbox/*; "
            "found string 'sandbox/ x'",
            id="git-bad-branch-glob",
        ),
        pytest.param(
            GIT_BASE + """
github:
  deny:
    - {method: DELETE, path: /repos/x, graphql: deleteIssue, reason: nope}
    - {graphql: deleteIssue, method: POST, reason: nope}
    - {reason: nope}
""",
            "3 problems in M:\n"
            "M:7: github.deny[0]: expected either path (REST) or graphql (a mutation field); found both\n"
            "M:8: github.deny[1].method: expected no method with graphql (GraphQL is POST /graphql); "
            "found string 'POST'\n"
            "M:9: github.deny[2]: expected either path (REST) or graphql (a mutation field); found neither",
            id="github-deny-path-or-graphql",
        ),
        pytest.param(
            GIT_BASE + """
github:
  deny: [{graphql: deleteIssue, mehtod: POST}]
""",
            "2 problems in M:\n"
            "M:6: github.deny[0].mehtod: expected one of the keys method, path, graphql, reason; "
            "found unknown key 'mehtod' (did you mean 'method'?)\n"
            "M:6: github.deny[0].reason: expected a value (a one-line reason); found nothing",
            id="github-deny-misspelt-and-missing-reason",
        ),
    ],
)
def test_git_and_github_errors(write_manifest, text, message):
    assert errors_of(write_manifest, text) == message


PASSTHROUGH = """
version: 1
name: demo
egress:
  allow:
    - host: pinned.example.com
      tls: passthrough
      ports: [443]
"""


def test_a_passthrough_rule_is_host_and_port_only(write_manifest):
    data = load_manifest(write_manifest(PASSTHROUGH)).data
    assert data["egress"]["allow"][0]["tls"] == "passthrough"


@pytest.mark.parametrize("text, message", [
    pytest.param(PASSTHROUGH + "      methods: [GET]\n      paths: [/x]\n      scan_body: false\n",
                 "3 problems in M:\n"
                 "M:8: egress.allow[0].methods: expected no methods on a tls: passthrough rule (the proxy does not "
                 "decrypt it, so it sees no requests); found a list of 1 item\n"
                 "M:9: egress.allow[0].paths: expected no paths on a tls: passthrough rule (the proxy does not "
                 "decrypt it, so it sees no paths); found a list of 1 item\n"
                 "M:10: egress.allow[0].scan_body: expected no scan_body on a tls: passthrough rule (nothing of it "
                 "is scanned); found boolean false", id="scope"),
    pytest.param(PASSTHROUGH + "  routes:\n    - host: pinned.example.com\n"
                 "      auth: {scheme: bearer, token_ref: PIN_TOKEN}\n",
                 "M:9: egress.routes[0].host: expected a host whose TLS the proxy decrypts (egress.allow[0] passes "
                 "pinned.example.com through, so no credential can be injected); found string 'pinned.example.com'",
                 id="credential-route"),
    pytest.param(PASSTHROUGH + "    - host: '*.example.com'\n",
                 "M:5: egress.allow[0].host: expected a host no other egress.allow rule covers on the same port "
                 "(egress.allow[1] covers *.example.com; decrypt it or pass it through, not both); found string "
                 "'pinned.example.com'", id="also-decrypted"),
    pytest.param(PASSTHROUGH + "git:\n  repositories: [{repo: pinned.example.com/a/b, access: read}]\n",
                 "M:9: git.repositories[0].repo: expected a repository on a host whose TLS the proxy decrypts "
                 "(egress.allow[0] passes it through, so git cannot be checked); found string "
                 "'pinned.example.com/a/b'", id="git"),
    pytest.param(PASSTHROUGH.replace("passthrough", "passthru"),
                 "M:6: egress.allow[0].tls: expected one of intercept, passthrough; found string 'passthru' "
                 "(did you mean 'passthrough'?)", id="misspelt"),
])
def test_a_passthrough_rule_refuses_what_needs_decryption(write_manifest, text, message):
    assert errors_of(write_manifest, text) == message


def test_the_dry_run_marks_a_passthrough_rule_unscanned(write_manifest):
    from bottle.backend.docker.plan import docker_plan
    from bottle.plan import build_plan

    plan = build_plan(load_manifest(write_manifest(PASSTHROUGH)), env={}, run_id="abc123")
    text = docker_plan(plan).render_text()
    assert ("  egress.allow[0]  pinned.example.com  ports 443  [TLS passthrough: not decrypted, nothing scanned]"
            in text.splitlines())


def test_capture_is_proxy_or_transparent(write_manifest):
    manifest = load_manifest(write_manifest(MINIMAL.replace("egress:\n", "egress:\n  capture: transparent\n")))
    assert manifest.data["egress"]["capture"] == "transparent"
    assert errors_of(write_manifest, MINIMAL.replace("egress:\n", "egress:\n  capture: tproxy\n")) == (
        "M:4: egress.capture: expected one of proxy, transparent; found string 'tproxy' (did you mean 'proxy'?)")


def test_transparent_capture_listens_for_at_most_64_ports(write_manifest):
    ports = list(range(1000, 1063))
    text = f"version: 1\nname: demo\negress:\n  capture: transparent\n  allow:\n    - host: a.example\n      ports: {ports}\n"
    assert errors_of(write_manifest, text) == (
        "M:4: egress.capture: expected at most 64 distinct ports in egress.allow with transparent capture (the proxy "
        "listens for each); found 65 ports (80 and 443 included)")
    load_manifest(write_manifest(text.replace("capture: transparent", "capture: proxy")))
