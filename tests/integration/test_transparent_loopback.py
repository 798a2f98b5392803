"""The real launcher with transparent listeners, real pipelock and the test upstream on
127.0.0.1. curl has no proxy settings; `--connect-to` stands in for the capture's nftables
rules, sending the connection to the listener for the upstream's port."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.loopback import AWS_KEY, Loopback

pytestmark = pytest.mark.needs_pipelock


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    lb = Loopback(tmp_path_factory.mktemp("transparent"), transparent=True)
    try:
        lb.start()
        yield lb
    finally:
        lb.stop()


def last_line(loopback, path: str) -> dict:
    lines = loopback.wait_proxy_lines(lambda l: l.get("path") == path, 1)
    assert lines, f"no log line for {path}"
    return lines[-1]


def test_a_client_without_proxy_settings_reaches_the_upstream_through_the_proxy(loopback):
    assert loopback.curl_transparent("/") == (200, "hello from loopback\n")
    line = last_line(loopback, "/")
    # The port is the one the client dialled, told by the listener that accepted it.
    assert (line["host"], line["port"], line["decision"], line["rule"]) == (
        "localhost", loopback.upstream_port, "allow", "egress.allow[0]")


def test_a_proxy_aware_client_uses_the_same_proxy_beside_it(loopback):
    assert loopback.curl("/") == (200, "hello from loopback\n")


def test_a_secret_in_a_captured_request_is_blocked_before_upstream(loopback):
    body = json.dumps({"note": f"key {AWS_KEY}"})
    code, text = loopback.curl_transparent("/echo", "-X", "POST", "-H", "content-type: application/json",
                                           "--data", body)
    assert (code, text) == (403, "bottle: blocked: scanner found DLP-AWS Access ID: Secret-like token detected "
                                 "(AWS Access ID)\n")
    assert not any(AWS_KEY in e.get("body_text", "") for e in loopback.upstream_events())


def test_a_host_header_that_is_not_the_sni_is_misdirected(loopback):
    code, text = loopback.curl_transparent("/fronted", "--http1.1", "-H", "Host: other.test")
    assert (code, text) == (421, "bottle: blocked: misdirected request: TLS SNI localhost, Host other.test do not "
                                 "agree\n")
    assert not [e for e in loopback.upstream_events() if e.get("path") == "/fronted"]


def test_a_captured_tls_connection_without_sni_is_refused(loopback):
    # curl sends no SNI for an address; -k: the certificate cannot name a host it was not told.
    out = subprocess.run(
        ["curl", "-sSk", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20",
         f"https://127.0.0.1:{loopback.transparent_port}/nosni"],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    body, _, code = out.stdout.rpartition("\n")
    assert (code, body) == ("421", "bottle: blocked: misdirected request: a captured TLS connection must name its "
                                   "host in the TLS SNI (bottle never connects to the address the agent dialled)\n")
    assert not [e for e in loopback.upstream_events() if e.get("path") == "/nosni"]


def test_a_captured_plain_http_request_goes_by_its_host_header(loopback):
    code, text = loopback.curl_transparent("/plain", "-H", "Host: other.test", scheme="http")
    assert (code, text) == (403, "bottle: blocked: no rule allows host other.test\n")
    line = last_line(loopback, "/plain")
    assert (line["scheme"], line["host"], line["port"]) == ("http", "other.test", loopback.upstream_port)

