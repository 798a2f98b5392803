"""TLS passthrough: a `tls: passthrough` tunnel is left undecrypted only when its CONNECT
target, SNI, port and client all check out; anything else is decrypted and refused."""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace

import pytest
from mitmproxy.test import taddons

from bottle.mitm import decide
from bottle.mitm.policy import PolicyError, parse_policy
from mitm_fixture import ENV, POLICY, Chain, policy_text
from test_mitm_addon import make_flow, run

AGENT = "172.20.0.3"
PINNED = {"id": "egress.allow[7]", "host": "pinned.example.com", "methods": None, "paths": None, "ports": [443],
          "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "passthrough"}


def chain():
    lines: list[dict] = []
    policy = parse_policy(policy_text(allow=[*POLICY["allow"], PINNED]))
    return Chain(policy, None, env=dict(ENV), emit=lines.append), lines


def hello(host="pinned.example.com", port=443, sni="pinned.example.com", peer=AGENT):
    return SimpleNamespace(context=SimpleNamespace(server=SimpleNamespace(address=(host, port)),
                                                   client=SimpleNamespace(peername=(peer, 40000))),
                           client_hello=SimpleNamespace(sni=sni), ignore_connection=False)


def clienthello(addons, data):
    with taddons.context():
        for addon in addons.addons:
            if hasattr(addon, "tls_clienthello"):
                asyncio.run(addon.tls_clienthello(data))
    return data


def test_a_passthrough_tunnel_is_not_decrypted_and_is_logged_as_unscanned():
    addons, lines = chain()
    assert clienthello(addons, hello()).ignore_connection is True
    (line,) = lines
    assert {k: line[k] for k in ("method", "host", "port", "path", "status", "decision", "rule", "scan")} == {
        "method": "CONNECT", "host": "pinned.example.com", "port": 443, "path": "", "status": 200,
        "decision": "allow", "rule": "egress.allow[7]", "scan": "none"}


@pytest.mark.parametrize("data", [
    pytest.param(hello(sni="other.example.com"), id="sni-names-another-host"),
    pytest.param(hello(sni=None), id="no-sni"),
    pytest.param(hello(port=8443, sni="pinned.example.com"), id="port-not-in-the-rule"),
    pytest.param(hello(host="api.anthropic.com", sni="api.anthropic.com"), id="an-intercepted-host"),
    pytest.param(hello(peer="172.20.0.9"), id="not-the-agent"),
])
def test_anything_else_is_decrypted(data):
    addons, lines = chain()
    assert clienthello(addons, data).ignore_connection is False
    assert lines == []


def test_a_decrypted_request_to_a_passthrough_host_is_refused():
    addons, lines = chain()
    f = run(addons, make_flow(method="GET", url="https://pinned.example.com/x"))
    assert f.response.status_code == 403
    assert lines[0]["reason"] == "GET /x is not allowed for pinned.example.com by egress.allow[7]"


def test_an_error_in_the_hook_leaves_the_tunnel_decrypted(monkeypatch, capsys):
    addons, _ = chain()

    def broken(*args):
        raise RuntimeError("injected")

    monkeypatch.setattr(decide, "passthrough_rule", broken)
    assert clienthello(addons, hello()).ignore_connection is False
    assert "bottle: TlsPassthrough.tls_clienthello failed, blocking" in capsys.readouterr().err


def test_passthrough_applies_only_when_every_rule_for_host_and_port_says_so():
    policy = parse_policy(policy_text(allow=[*POLICY["allow"], PINNED]))
    assert decide.passthrough_rule(policy, "pinned.example.com", 443).id == "egress.allow[7]"
    assert decide.passthrough_rule(policy, "api.anthropic.com", 443) is None
    assert decide.find_rule(policy, "pinned.example.com", 443, "GET", "/") is None


def test_the_policy_file_refuses_methods_or_paths_on_a_passthrough_rule():
    bad = dict(copy.deepcopy(PINNED), paths=["/x"])
    with pytest.raises(PolicyError, match=r"^allow\[7\]: a tls passthrough rule cannot name methods or paths "
                                          r"\(nothing is decrypted\)$"):
        parse_policy(policy_text(allow=[*POLICY["allow"], bad]))
