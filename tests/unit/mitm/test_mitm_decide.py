from __future__ import annotations

import base64
import socket

import pytest

from bottle.mitm import credentials, decide
from bottle.mitm.policy import host_matches, is_ip_literal, parse_policy
from bottle.mitm.redact import loggable_path
from bottle.mitm.upstream import UpstreamRefused, filter_addresses
from mitm_fixture import policy_text


@pytest.mark.parametrize("pattern, host, expected", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.Example.com.", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "example.com.evil.test", False),
    ("*.Example.com.", "API.example.COM.", True),
])
def test_host_matches(pattern, host, expected):
    assert host_matches(pattern, host) is expected


@pytest.mark.parametrize("host, expected", [
    ("1.2.3.4", True), ("::1", True), ("[::1]", True), ("fe80::1%eth0", True), ("example.com", False),
    ("1.2.3.4.nip.io", False), ("127.1", True), ("0x7f.1", True), ("017700000001", True), ("1password.com", False),
    ("123.example", False),
])
def test_is_ip_literal(host, expected):
    assert is_ip_literal(host) is expected


@pytest.mark.parametrize("ip, allow_private, expected", [
    ("93.184.216.34", False, True),
    ("2606:4700::1111", False, True),
    ("10.0.0.1", False, False),
    ("172.16.5.5", False, False),
    ("192.168.1.1", False, False),
    ("127.0.0.1", False, False),
    ("127.0.0.1", True, True),
    ("100.64.0.1", False, False),
    ("169.254.169.254", False, False),
    ("169.254.169.254", True, False),
    ("169.254.1.1", False, False),
    ("::1", False, False),
    ("fd00::1", False, False),
    ("fd00:ec2::254", True, False),
    ("::ffff:10.0.0.1", False, False),
    ("::ffff:93.184.216.34", False, True),
    ("::ffff:169.254.169.254", True, False),
    ("2002:a00:1::", False, False),
    ("0.0.0.0", True, False),
    ("224.0.0.1", True, False),
    ("not-an-ip", True, False),
])
def test_is_permitted_upstream_ip(ip, allow_private, expected):
    assert decide.is_permitted_upstream_ip(ip, allow_private) is expected


@pytest.mark.parametrize("path, expected", [
    ("/a", "/a"),
    ("/a?x=1&y=2", "/a?x=REDACTED&y=REDACTED"),
    ("/a?flag&k=", "/a?REDACTED&k=REDACTED"),
    ("/a?AKIAIOSFODNN7EXAMPLE", "/a?REDACTED"),
    ("/v1/AKIAIOSFODNN7EXAMPLE/x", "/v1/REDACTED/x"),
    ("/repos/acme/widgets/git/refs/heads/main", "/repos/acme/widgets/git/refs/heads/main"),
    ("/objects/3f2a9c1e0b7d4a6f8e2c5b1d9a7f3e6c", "/objects/REDACTED"),
])
def test_loggable_path_keeps_structure_and_never_a_token(path, expected):
    assert loggable_path(path) == expected


@pytest.mark.parametrize("connect, sni, host, allowed", [
    ("a.test", "a.test", "a.test", True),
    ("a.test", None, "A.TEST:443", True),
    ("a.test", "a.test.", None, True),
    ("::1", None, "[::1]:443", True),
    ("a.test", "b.test", None, False),
    ("a.test", None, "b.test", False),
])
def test_check_fronting(connect, sni, host, allowed):
    assert decide.check_fronting(connect, sni, host).allowed is allowed


def test_client_identity_accepts_ipv4_mapped_agent():
    policy = parse_policy(policy_text())
    assert decide.check_client(policy, "::ffff:172.20.0.3").allowed
    assert decide.check_client(policy, "172.20.0.4") == decide.block(
        403, "client 172.20.0.4 is not this bottle's agent")


def infos(*ips):
    return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 443)) for ip in ips]


@pytest.mark.parametrize("host, port, resolved, kept, error", [
    ("api.anthropic.com", 443, ["160.79.104.10", "10.0.0.5"], ["160.79.104.10"], None),
    ("api.anthropic.com", 443, ["10.0.0.5"], None,
     "bottle: api.anthropic.com resolves only to refused addresses (10.0.0.5)"),
    ("internal.test", 8443, ["10.0.0.5"], ["10.0.0.5"], None),
    ("evil.test", 443, ["93.184.216.34"], None, "bottle: evil.test is not an allowed upstream"),
    ("pipelock", 9090, ["172.20.0.5"], ["172.20.0.5"], None),
])
def test_resolved_upstream_addresses_are_filtered(host, port, resolved, kept, error):
    policy = parse_policy(policy_text())
    if error:
        with pytest.raises(UpstreamRefused) as e:
            filter_addresses(policy, host, port, infos(*resolved))
        assert str(e.value) == error
    else:
        assert [i[4][0] for i in filter_addresses(policy, host, port, infos(*resolved))] == kept


def test_discover_mode_resolves_unknown_hosts_to_global_addresses_only():
    policy = parse_policy(policy_text(mode="discover"))
    assert [i[4][0] for i in filter_addresses(policy, "evil.test", 443, infos("1.1.1.1", "127.0.0.1"))] == ["1.1.1.1"]


# -- scrubbing a credential out of a response -----------------------------------

PAIRS = [(b"real-secret", b"<placeholder>"), (b"cmVhbC1zZWNyZXQ=", b"<placeholder>")]


@pytest.mark.parametrize("body, expected, count", [
    (b"no secret here", b"no secret here", 0),
    (b"real-secret", b"<placeholder>", 1),
    (b"a real-secret b real-secret", b"a <placeholder> b <placeholder>", 2),
    (b"Basic cmVhbC1zZWNyZXQ=;real-secret", b"Basic <placeholder>;<placeholder>", 2),
    (b"real-secre", b"real-secre", 0),
    (b"real-real-secret", b"real-<placeholder>", 1),
])
def test_scrubber_replaces_a_secret_wherever_the_chunks_split_it(body, expected, count):
    whole = credentials.Scrubber(PAIRS)
    assert (whole.replace(body), whole.count) == (expected, count)
    for size in range(1, len(body) + 1):
        scrubber = credentials.Scrubber(PAIRS)
        out = b"".join(scrubber.feed(body[i:i + size]) for i in range(0, len(body), size)) + scrubber.feed(b"")
        assert (out, scrubber.count) == (expected, count), size


def test_scrubber_holds_back_only_what_could_start_a_secret():
    scrubber = credentials.Scrubber([(b"real-secret", b"<p>")])
    assert scrubber.feed(b"0123456789abcdef") == b"012345"
    assert scrubber.feed(b"") == b"6789abcdef"


@pytest.mark.parametrize("route_id, env, expected", [
    ("egress.routes[2]", {"EXAMPLE_TOKEN": "example-real"}, [b"example-real"]),
    ("egress.routes[1]", {"GITHUB_TOKEN": "ghp_realvalue"},
     [b"ghp_realvalue", base64.b64encode(b"x-access-token:ghp_realvalue")]),
    ("egress.routes[4]", {"BASIC_PAIR": "alice:s3cret"}, [b"alice:s3cret", base64.b64encode(b"alice:s3cret")]),
])
def test_credential_scrubs_name_the_value_and_the_basic_form_sent(route_id, env, expected):
    policy = parse_policy(policy_text())
    route = next(r for r in policy.routes if r.id == route_id)
    placeholder = policy.placeholders[route.token_ref]
    pairs = credentials.credential_scrubs(route, placeholder, env)
    assert [real for real, _ in pairs] == expected
    assert {p for _, p in pairs} == {placeholder.encode()}


@pytest.mark.parametrize("tls, sni, host_header, host, status", [
    (True, "API.Anthropic.com", "api.anthropic.com", "api.anthropic.com", None),
    (True, "api.anthropic.com", None, "api.anthropic.com", None),  # HTTP/2 without :authority, say
    (True, None, "api.anthropic.com", None, 421),  # the Host alone does not name a TLS connection's host
    (True, "", None, None, 421),
    (False, None, "internal.test:8443", "internal.test", None),
    (False, None, "[::1]:80", "::1", None),  # an IP literal: named, and refused by the allow step
    (False, None, None, None, 421),
    (False, None, ":80", None, 421),
])
def test_a_captured_connection_goes_to_its_sni_or_host_header(tls, sni, host_header, host, status):
    verdict, named = decide.transparent_destination(tls, sni, host_header)
    assert named == host
    assert verdict.allowed is (status is None) and (status is None or verdict.status == status)


def test_without_a_connect_target_sni_and_host_are_checked_against_each_other():
    assert decide.check_fronting(None, "a.test", "a.test:443").allowed
    assert decide.check_fronting(None, "a.test", None).allowed
    assert decide.check_fronting(None, "a.test", "b.test").reason == (
        "misdirected request: TLS SNI a.test, Host b.test do not agree")


@pytest.mark.parametrize("name, allowed, reason, rule", [
    ("api.anthropic.com", True, "", "egress.allow[0]"),
    ("deep.raw.githubusercontent.com", True, "", "egress.allow[1]"),
    ("internal.test", True, "", "egress.allow[6]"),  # only on 8443: DNS knows no port
    ("githubusercontent.com", False, "no rule allows host githubusercontent.com", None),
    ("a.b.c.d.e.githubusercontent.com", False, "host a.b.c.d.e.githubusercontent.com under *.githubusercontent.com: "
     "5 labels look like encoded data (at most 4 under a wildcard)", "egress.allow[1]"),
    ("10.0.0.1", False, "IP literal destination 10.0.0.1 is not allowed; name the host", None),
    ("pipelock", False, "the scanner is not a destination", None),
])
def test_dns_answers_a_name_when_some_rule_allows_its_host_on_any_port(name, allowed, reason, rule):
    verdict = decide.check_name(parse_policy(policy_text()), name)
    assert (verdict.allowed, verdict.reason, verdict.rule_id) == (allowed, reason, rule)
