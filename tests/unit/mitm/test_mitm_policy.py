from __future__ import annotations

import json

import pytest

from bottle.mitm.policy import PolicyError, parse_policy
from mitm_fixture import POLICY, policy_dict


def test_example_policy_parses_and_round_trips():
    policy = parse_policy(json.dumps(POLICY))
    assert policy.allow[1].host == "*.githubusercontent.com"
    assert policy.routes[0].header == "x-api-key"
    assert policy.dns.port == 53
    assert parse_policy(policy.to_json()) == policy


def with_rule(**changes):
    rule = dict(POLICY["allow"][0], **changes)
    return policy_dict(allow=[rule])


def with_route(**changes):
    route = dict(POLICY["routes"][0], **changes)
    return policy_dict(routes=[route], placeholders={route["token_ref"]: POLICY["placeholders"]["ANTHROPIC_API_KEY"]})


def drop(key):
    data = policy_dict()
    del data[key]
    return data


ERRORS = [
    ("{", "policy is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ([], "policy: must be an object"),
    (policy_dict(version=1), "version: unsupported policy version 1 (expected 2)"),
    (policy_dict(extra=1), "policy: unknown key(s): extra"),
    (drop("clients"), "clients: required key is missing"),
    (policy_dict(mode="audit"), "mode: must be one of enforce, discover, got 'audit'"),
    (policy_dict(clients=["agent"]), "clients[0]: not an IP address: 'agent'"),
    (policy_dict(listen={"host": "0.0.0.0", "port": 0}), "listen.port: port out of range: 0"),
    (policy_dict(listen={"host": "0.0.0.0", "port": "80"}), "listen.port: expected an integer, got str"),
    (with_rule(host="1.2.3.4"), "allow[0].host: IP literals are not allowed, name the host: '1.2.3.4'"),
    (with_rule(host="api.*.com"), "allow[0].host: not a host name or *.suffix pattern: 'api.*.com'"),
    (with_rule(paths=["v1"]), "allow[0].paths[0]: not a valid path prefix (must start with /): 'v1'"),
    (with_rule(methods=[]), "allow[0].methods: must be null (any) or a non-empty list"),
    (with_rule(methods=["get"]), "allow[0].methods[0]: not a valid HTTP method: 'get'"),
    (with_rule(ports=[True]), "allow[0].ports[0]: expected an integer, got True"),
    (with_rule(scan_body="no"), "allow[0].scan_body: expected true or false, got str"),
    (with_rule(colour="red"), "allow[0]: unknown key(s): colour"),
    (with_route(scheme="digest"), "routes[0].scheme: must be one of bearer, token, basic, header, got 'digest'"),
    (with_route(header=None), "routes[0].header: scheme header needs a valid header name"),
    (with_route(scheme="bearer"), "routes[0].header: only allowed with scheme header"),
    (with_route(token_ref="A-B"), "routes[0].token_ref: not a valid environment variable name: 'A-B'"),
    (policy_dict(placeholders=dict(POLICY["placeholders"], ANTHROPIC_API_KEY="short")),
     "placeholders.ANTHROPIC_API_KEY: must be at least 16 characters without spaces"),
    (policy_dict(placeholders={}), "placeholders.ANTHROPIC_API_KEY: required key is missing"),
    (policy_dict(placeholders=dict(POLICY["placeholders"], UNUSED="x" * 20)),
     "placeholders.UNUSED: no route uses this token_ref"),
    (with_route(id="egress.allow[0]"), "allow/routes id: duplicate value 'egress.allow[0]'"),
    (policy_dict(scanner=dict(POLICY["scanner"], url="https://p/api")),
     "scanner.url: must be an http:// URL with a host and path, got 'https://p/api'"),
    (policy_dict(scanner=dict(POLICY["scanner"], mode="warn")),
     "scanner.mode: must be one of block, audit, got 'warn'"),
    (policy_dict(dns={"host": "x", "port": 53}), "dns.host: not an IP address: 'x'"),
]


@pytest.mark.parametrize("data, message", ERRORS)
def test_invalid_policy_names_the_key(data, message):
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert str(e.value) == message


GIT = {"repositories": [{"id": "git.repositories[0]", "host": "github.com", "path": "acme/widgets", "access": "push"}],
       "protected_branches": ["main"], "push_branches": None, "allow_force_push": False,
       "allow_branch_deletion": False}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"git": dict(GIT, repositories=[dict(GIT["repositories"][0], path="Acme/Widgets")])},
         "git.repositories[0].path: not a lower-case owner/repo path: 'Acme/Widgets'"),
        ({"git": dict(GIT, repositories=[dict(GIT["repositories"][0], host="*.github.com")])},
         "git.repositories[0].host: a git repository host must be exact: '*.github.com'"),
        ({"git": dict(GIT, repositories=[dict(GIT["repositories"][0], access="write")])},
         "git.repositories[0].access: must be one of read, push, got 'write'"),
        ({"git": dict(GIT, extra=1)}, "git: unknown key(s): extra"),
        ({"github": {"deny": [{"id": "d", "method": None, "path": None, "graphql": None, "reason": "r"}]}},
         "github.deny[0]: needs either path (REST) or graphql"),
        ({"github": {"deny": [{"id": "d", "method": "POST", "path": None, "graphql": "x", "reason": "r"}]}},
         "github.deny[0].method: an HTTP method, only with path: 'POST'"),
    ],
)
def test_bad_git_and_github_sections_are_refused(changes, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(policy_dict(**changes)))
    assert str(info.value) == message


def test_git_and_github_sections_round_trip():
    deny = {"deny": [{"id": "github.deny[0]", "method": None, "path": None, "graphql": "deleteIssue", "reason": "r"}]}
    policy = parse_policy(json.dumps(policy_dict(git=GIT, github=deny)))
    assert policy.git.repositories[0].path == "acme/widgets"
    assert parse_policy(policy.to_json()) == policy


TRANSPARENT = {"ports": [{"port": 443, "listen": 15001}], "dns_address": "198.18.0.1"}


def test_a_transparent_section_round_trips():
    policy = parse_policy(json.dumps(policy_dict(transparent=TRANSPARENT)))
    assert policy.transparent.original_port(15001) == 443 and policy.transparent.original_port(15002) is None
    assert parse_policy(policy.to_json()) == policy
    assert parse_policy(json.dumps(POLICY)).transparent is None


@pytest.mark.parametrize("transparent, message", [
    (dict(TRANSPARENT, ports=[]), "transparent.ports: must list 1 to 64 ports"),
    (dict(TRANSPARENT, ports=[{"port": 443, "listen": 8080}]),
     "transparent.ports[0].listen: 8080 is a port the proxy already serves"),
    (dict(TRANSPARENT, ports=[{"port": 443, "listen": 53}]),
     "transparent.ports[0].listen: 53 is a port the proxy already serves"),
    (dict(TRANSPARENT, ports=[{"port": 443, "listen": 15001}, {"port": 443, "listen": 15002}]),
     "transparent.ports port: duplicate value '443'"),
    (dict(TRANSPARENT, ports=[{"port": 80, "listen": 15001}, {"port": 443, "listen": 15001}]),
     "transparent.ports listen: duplicate value '15001'"),
    (dict(TRANSPARENT, ports=[{"port": 0, "listen": 15001}]), "transparent.ports[0].port: port out of range: 0"),
    (dict(TRANSPARENT, dns_address="fd00::1"),
     "transparent.dns_address: must be an IPv4 address (the agent has no IPv6)"),
    (dict(TRANSPARENT, dns_address="proxy"), "transparent.dns_address: not an IP address: 'proxy'"),
    (dict(TRANSPARENT, mode="transparent"), "transparent: unknown key(s): mode"),
])
def test_a_bad_transparent_section_is_refused(transparent, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(policy_dict(transparent=transparent)))
    assert str(info.value) == message
