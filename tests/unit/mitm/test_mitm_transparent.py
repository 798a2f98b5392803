"""Transparent capture in the proxy (bottle.mitm.transparent): a captured connection goes to
the host its TLS SNI or Host header names, never to the address the agent dialled, and then
through the same pipeline as a proxied request."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mitmproxy.proxy import mode_specs

from bottle.mitm import decide, patches, transparent
from bottle.mitm.policy import parse_policy
from mitm_fixture import ENV, P_ANTHROPIC, POLICY, Chain, policy_text
from test_mitm_addon import AGENT, FakeScanner, make_flow, run
from test_mitm_passthrough import clienthello

PROXY_IP = "172.20.0.2"
TRANSPARENT = {"ports": [{"port": 80, "listen": 15001}, {"port": 443, "listen": 15002},
                         {"port": 8443, "listen": 15003}], "dns_address": "198.18.0.1"}
PINNED = {"id": "egress.allow[7]", "host": "pinned.example.com", "methods": None, "paths": None, "ports": [443],
          "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "passthrough"}
WILD_PINNED = dict(PINNED, id="egress.allow[8]", host="*.pinned.test")


def chain(**changes):
    lines: list[dict] = []
    policy = parse_policy(policy_text(transparent=TRANSPARENT, allow=[*POLICY["allow"], PINNED, WILD_PINNED],
                                      **changes))
    return Chain(policy, FakeScanner(), env=dict(ENV), emit=lines.append), lines


def captured(*, tls=True, sni="api.anthropic.com", host_header="api.anthropic.com", port=443, method="POST",
             path="/v1/messages", headers=()):
    """A request as mitmproxy hands it over from a transparent listener: its host is the
    address the connection arrived at (the proxy's own), its port the one the agent dialled."""
    scheme = "https" if tls else "http"
    f = make_flow(method=method, url=f"{scheme}://{PROXY_IP}:{port}{path}", headers=headers, sni=sni or "")
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse(f"transparent@{PROXY_IP}:15002")
    f.client_conn.tls = tls
    f.client_conn.sni = sni
    if host_header is None:
        f.request.headers.pop("host", None)
    else:
        f.request.headers["host"] = host_header
    return f


def test_a_captured_tls_request_goes_to_its_sni_and_keeps_the_host_header_it_was_sent_with():
    addons, lines = chain()
    f = run(addons, captured(host_header="api.anthropic.com:443"))
    assert (f.response.status_code, f.request.host, f.request.port) == (200, "api.anthropic.com", 443)
    assert f.request.headers["host"] == "api.anthropic.com:443"
    (line,) = lines
    assert (line["host"], line["port"], line["scheme"], line["decision"], line["rule"]) == (
        "api.anthropic.com", 443, "https", "allow", "egress.allow[0]")


def test_a_captured_request_gets_the_credential_on_its_route_like_a_proxied_one():
    addons, lines = chain()
    f = run(addons, captured(headers=[("x-api-key", P_ANTHROPIC)]))
    assert f.response.status_code == 200
    assert f.request.headers["x-api-key"] == ENV["ANTHROPIC_API_KEY"]
    assert lines[0]["token_ref"] == "ANTHROPIC_API_KEY"


def test_a_secret_in_a_captured_request_is_scanned_and_blocked():
    from bottle.mitm.scanner import ScanResult

    addons, lines = chain()
    addons.scanner = FakeScanner(text=ScanResult("deny", [("DLP-AWS Access ID", "found")]))
    f = run(addons, captured(headers=[("content-type", "application/json")]))
    assert f.response.status_code == 403 and lines[0]["scanner"] == ["DLP-AWS Access ID"]


REFUSALS = [
    pytest.param(dict(sni=None), 421, "misdirected request: a captured TLS connection must name its host in the TLS "
                 "SNI (bottle never connects to the address the agent dialled)", "api.anthropic.com", id="no-sni"),
    pytest.param(dict(tls=False, sni=None, host_header=None, port=80), 421,
                 "misdirected request: a captured HTTP request must name its host in the Host header (bottle never "
                 "connects to the address the agent dialled)", "", id="no-host"),
    pytest.param(dict(host_header="evil.test"), 421,
                 "misdirected request: TLS SNI api.anthropic.com, Host evil.test do not agree", "evil.test",
                 id="sni-and-host-disagree"),
    pytest.param(dict(sni="evil.test", host_header="evil.test"), 403, "no rule allows host evil.test", "evil.test",
                 id="host-not-allowed"),
    pytest.param(dict(tls=False, sni=None, host_header="93.184.216.34", port=80), 403,
                 "IP literal destination 93.184.216.34 is not allowed; name the host", "93.184.216.34",
                 id="ip-literal-host"),
    pytest.param(dict(tls=False, sni=None, port=80), 403,
                 "port 80 is not allowed for host api.anthropic.com by egress.allow[0]", "api.anthropic.com",
                 id="port-not-allowed"),
    pytest.param(dict(sni="pipelock", host_header="pipelock"), 403, "the scanner is not a destination", "pipelock",
                 id="scanner"),
    pytest.param(dict(authority="other.test"), 421,
                 "misdirected request: the request names other.test:443 but its connection is to "
                 "api.anthropic.com:443", "other.test", id="absolute-form"),
]


@pytest.mark.parametrize("flow, status, reason, logged_host", REFUSALS)
def test_captured_requests_are_refused_for_what_a_proxied_one_would_be_and_for_naming_no_host(
        flow, status, reason, logged_host):
    addons, lines = chain()
    flow = dict(flow)
    authority = flow.pop("authority", None)
    f = captured(**flow)
    if authority:  # an absolute-form target: mitmproxy keeps the authority it names
        f.request.authority = authority
    f = run(addons, f)
    assert (f.response.status_code, f.response.get_text()) == (status, f"bottle: blocked: {reason}\n")
    (line,) = lines
    assert (line["status"], line["decision"], line["reason"], line["host"]) == (status, "block", reason, logged_host)


def test_a_plain_http_request_goes_to_its_host_header():
    addons, lines = chain()
    f = run(addons, captured(tls=False, sni=None, host_header="internal.test:8443", port=8443, method="GET",
                             path="/status"))
    assert (f.response.status_code, f.request.host, f.request.port, f.request.scheme) == (
        200, "internal.test", 8443, "http")
    assert (lines[0]["host"], lines[0]["rule"]) == ("internal.test", "egress.allow[6]")


def test_a_request_to_the_regular_listener_is_left_to_the_pipeline():
    addons, _ = chain()
    f = make_flow(sni="api.anthropic.com", host_header="evil.test")
    f = run(addons, f)  # the CONNECT target stays the destination, and is checked against SNI and Host
    assert f.response.get_text() == ("bottle: blocked: misdirected request: CONNECT target api.anthropic.com, "
                                     "TLS SNI api.anthropic.com, Host evil.test do not agree\n")


def hello(*, sni, port=443, mode="transparent"):
    client = SimpleNamespace(peername=(AGENT, 40000),
                             proxy_mode=mode_specs.ProxyMode.parse(f"{mode}@{PROXY_IP}:15002"))
    return SimpleNamespace(context=SimpleNamespace(server=SimpleNamespace(address=(PROXY_IP, port)), client=client),
                           client_hello=SimpleNamespace(sni=sni), ignore_connection=False)


def test_the_sni_of_a_captured_connection_becomes_its_server_address_before_passthrough_decides():
    addons, lines = chain()
    data = clienthello(addons, hello(sni="Pinned.Example.com"))
    assert data.context.server.address == ("pinned.example.com", 443)
    assert data.ignore_connection is True  # a passthrough rule: not decrypted, logged
    assert (lines[0]["method"], lines[0]["host"], lines[0]["rule"]) == ("CONNECT", "pinned.example.com",
                                                                        "egress.allow[7]")


@pytest.mark.parametrize("sni", [
    None,  # no name: decrypted, then refused as a request without SNI
    "a1b2c3d4e5f6a7b8c9d0e1f2.pinned.test",  # encoded labels under a wildcard: never passed through
])
def test_a_captured_connection_is_passed_through_only_when_its_host_passes_the_connect_checks(sni):
    addons, lines = chain()
    data = clienthello(addons, hello(sni=sni))
    assert data.ignore_connection is False and lines == []
    assert decide.check_connect(addons.policy, "a1b2c3d4e5f6a7b8c9d0e1f2.pinned.test", 443).allowed is False


def test_a_regular_connection_keeps_its_connect_target():
    addons, _ = chain()
    data = clienthello(addons, hello(sni="api.anthropic.com", mode="regular"))
    assert data.context.server.address == (PROXY_IP, 443)


def test_the_transparent_hooks_fail_closed(monkeypatch, capsys):
    addon = transparent.TransparentDestination(chain()[0].runtime)
    assert addon.tls_clienthello.fail_closed and addon.requestheaders.fail_closed

    def broken(*args):
        raise RuntimeError("injected")

    monkeypatch.setattr(transparent.decide, "normalize_host", broken)
    data = hello(sni="api.anthropic.com")
    data.ignore_connection = True
    asyncio.run(addon.tls_clienthello(data))
    assert data.ignore_connection is False  # decrypted, so the pipeline decides
    assert "TransparentDestination.tls_clienthello failed, blocking" in capsys.readouterr().err


class _Socket:
    def __init__(self, listen):
        self.listen = listen

    def getsockname(self):
        return (PROXY_IP, self.listen)


def test_the_original_port_is_the_one_redirected_to_the_listener(monkeypatch):
    from mitmproxy import platform

    monkeypatch.setattr(platform, "original_addr", None)
    policy = parse_policy(policy_text(transparent=TRANSPARENT))
    patches.install_original_port(policy.transparent.original_port)
    assert platform.original_addr(_Socket(15002)) == (PROXY_IP, 443)
    assert platform.original_addr(_Socket(15003)) == (PROXY_IP, 8443)
    with pytest.raises(OSError, match="no captured port is redirected to listener 8080"):
        platform.original_addr(_Socket(8080))
