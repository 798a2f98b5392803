from __future__ import annotations

import asyncio
import base64
import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from bottle.mitm import responses, upstream
from bottle.mitm.policy import parse_policy
from bottle.mitm.scanner import ScannerUnavailable, ScanResult
from mitm_fixture import ENV, P_ANTHROPIC, P_BASIC, P_EXAMPLE, P_GITHUB, P_TOKEN, Chain, policy_text

AGENT = "172.20.0.3"
LOG_KEYS = {"time", "bottle", "client", "method", "scheme", "host", "port", "path", "status", "bytes_up",
            "bytes_down", "duration_ms", "decision", "rule", "reason", "scanner", "answer_scanner", "token_ref",
            "scrubbed", "log_format", "headers", "placeholders", "scan"}


class FakeScanner:
    def __init__(self, url=ScanResult("allow"), text=ScanResult("allow"), error=None, content=ScanResult("allow")):
        self.url_result, self.text_result, self.error, self.content_result = url, text, error, content
        self.urls: list[str] = []
        self.texts: list[str] = []
        self.contents: list[str] = []

    async def scan_url(self, url):
        self.urls.append(url)
        if self.error:
            raise self.error
        return self.url_result

    async def scan_text(self, text):
        self.texts.append(text)
        if self.error:
            raise self.error
        return self.text_result

    async def scan_content(self, text):
        self.contents.append(text)
        return self.content_result


def make_addon(fake=None, env=ENV, **policy_changes):
    lines: list[dict] = []
    policy = parse_policy(policy_text(**policy_changes))
    return Chain(policy, fake or FakeScanner(), env=dict(env), emit=lines.append), lines


def make_flow(method="POST", url="https://api.anthropic.com/v1/messages", headers=(), body=b"",
              peer=AGENT, sni=None, host_header=None, http2=False):
    f = tflow.tflow()
    f.live = True
    f.client_conn.peername = (peer, 40000)
    req = http.Request.make(method, url, body)
    for k, v in headers:
        req.headers[k] = v
    if http2:
        req.http_version = "HTTP/2.0"
        req.authority = host_header or req.host
    elif host_header:
        req.headers["host"] = host_header
    f.request = req
    f.client_conn.sni = sni if sni is not None else (req.host if req.scheme == "https" else None)
    f.response = None
    return f


async def run_request(addon, f, upstream_body=b"upstream says hi"):
    """What mitmproxy does for one request, with a canned upstream answer."""
    await addon.requestheaders(f)
    await addon.request(f)  # mitmproxy calls request even after requestheaders answered
    if f.response is None:
        f.response = http.Response.make(200, upstream_body, {"content-type": "text/plain"})
        await addon.responseheaders(f)
        if callable(f.response.stream):
            f.response.stream(upstream_body)
            f.response.stream(b"")
    else:
        await addon.responseheaders(f)
    await addon.response(f)
    return f


def run(addon, f):
    with taddons.context(addon):
        return asyncio.run(run_request(addon, f))


def body_of(f) -> str:
    return f.response.get_text()


# -- header-level decisions -------------------------------------------------

BLOCKS = [
    pytest.param(dict(peer="172.20.0.9"), 403, "client 172.20.0.9 is not this bottle's agent", None,
                 id="client-identity"),
    pytest.param(dict(url="https://evil.test/x"), 403, "no rule allows host evil.test", None, id="host"),
    pytest.param(dict(url="https://api.anthropic.com.evil.test/v1/x"), 403,
                 "no rule allows host api.anthropic.com.evil.test", None, id="suffix-trick"),
    pytest.param(dict(url="https://githubusercontent.com/x", method="GET"), 403,
                 "no rule allows host githubusercontent.com", None, id="wildcard-not-apex"),
    pytest.param(dict(url="https://1.2.3.4/v1/x", sni=""), 403,
                 "IP literal destination 1.2.3.4 is not allowed; name the host", None, id="ip-literal"),
    pytest.param(dict(url="https://api.anthropic.com:8443/v1/x"), 403,
                 "port 8443 is not allowed for host api.anthropic.com by egress.allow[0]", "egress.allow[0]",
                 id="port"),
    pytest.param(dict(method="GET"), 403,
                 "GET /v1/messages is not allowed for api.anthropic.com by egress.allow[0]", "egress.allow[0]",
                 id="method"),
    pytest.param(dict(url="https://api.anthropic.com/v2/x?key=secret"), 403,
                 "POST /v2/x?key=REDACTED is not allowed for api.anthropic.com by egress.allow[0]",
                 "egress.allow[0]", id="path-query-redacted"),
    pytest.param(dict(url="https://api.anthropic.com/v1/../admin"), 403,
                 "POST /v1/../admin is not allowed for api.anthropic.com by egress.allow[0]", "egress.allow[0]",
                 id="dot-segments"),
    pytest.param(dict(sni="evil.test"), 421,
                 "misdirected request: CONNECT target api.anthropic.com, TLS SNI evil.test do not agree", None,
                 id="fronting-sni"),
    pytest.param(dict(host_header="evil.test"), 421,
                 "misdirected request: CONNECT target api.anthropic.com, TLS SNI api.anthropic.com, "
                 "Host evil.test do not agree", None, id="fronting-host"),
    pytest.param(dict(host_header="evil.test:443", http2=True), 421,
                 "misdirected request: the request names evil.test:443 but its connection is to "
                 "api.anthropic.com:443", None, id="fronting-authority"),
    pytest.param(dict(headers=[("x-api-key", "sk-ant-agent-own-key")]), 403,
                 "x-api-key header on credential route egress.routes[0] is not bottle's placeholder for "
                 "ANTHROPIC_API_KEY", "egress.routes[0]", id="non-placeholder-credential"),
    pytest.param(dict(url="https://raw.githubusercontent.com/a", method="GET", headers=[("x-api-key", P_ANTHROPIC)]),
                 403, "credential placeholder for ANTHROPIC_API_KEY sent outside its route egress.routes[0]",
                 "egress.routes[0]", id="placeholder-other-host-header"),
    pytest.param(dict(url=f"https://raw.githubusercontent.com/a?k={P_GITHUB}", method="GET"), 403,
                 "credential placeholder for GITHUB_TOKEN sent outside its route egress.routes[1]",
                 "egress.routes[1]", id="placeholder-other-host-url"),
    pytest.param(dict(url="http://api.anthropic.com:443/v1/messages"), 403,
                 "credential route egress.routes[0] requires https", "egress.routes[0]", id="route-over-http"),
    pytest.param(dict(headers=[("content-length", "5000")]), 413,
                 "request body of 5000 bytes exceeds the scan limit of 1000", "egress.allow[0]", id="too-long"),
]


@pytest.mark.parametrize("flow_args, status, reason, rule", BLOCKS)
def test_request_is_blocked_before_upstream(flow_args, status, reason, rule):
    scanner = FakeScanner()
    addon, lines = make_addon(scanner)
    f = run(addon, make_flow(**flow_args))
    assert f.response.status_code == status
    assert body_of(f) == f"bottle: blocked: {reason}\n"
    assert f.response.headers["content-type"] == "text/plain; charset=utf-8"
    assert f.response.headers["x-bottle-decision"] == "block"
    assert f.response.headers.get("x-bottle-rule") == rule
    assert scanner.urls == []
    assert [(line["decision"], line["status"], line["reason"], line["rule"]) for line in lines] == [
        ("block", status, reason, rule)
    ]


@pytest.mark.parametrize("env, reason", [
    ({}, "credential ANTHROPIC_API_KEY not provided"),
    ({"ANTHROPIC_API_KEY": ""}, "credential ANTHROPIC_API_KEY not provided"),
])
def test_missing_credential_is_refused(env, reason):
    addon, lines = make_addon(env=env)
    f = run(addon, make_flow(headers=[("x-api-key", P_ANTHROPIC)]))
    assert (f.response.status_code, body_of(f)) == (403, f"bottle: blocked: {reason}\n")
    assert lines[0]["token_ref"] == "ANTHROPIC_API_KEY"


# -- credential injection ----------------------------------------------------

INJECTIONS = [
    pytest.param("https://api.anthropic.com/v1/messages", [("x-api-key", P_ANTHROPIC)],
                 "x-api-key", "sk-ant-real-value", "ANTHROPIC_API_KEY", id="header"),
    pytest.param("https://api.anthropic.com/v1/messages", [], "x-api-key", "sk-ant-real-value",
                 "ANTHROPIC_API_KEY", id="header-absent"),
    pytest.param("https://api.example.com/x", [("authorization", f"Bearer {P_EXAMPLE}")],
                 "authorization", "Bearer example-real", "EXAMPLE_TOKEN", id="bearer"),
    pytest.param("https://api.token.test/x", [("authorization", f"token {P_TOKEN}")],
                 "authorization", "token token-real", "TOKEN_TEST", id="token"),
    pytest.param("https://github.com/org/repo.git/git-receive-pack",
                 [("authorization", "Basic " + base64.b64encode(f"x-access-token:{P_GITHUB}".encode()).decode())],
                 "authorization", "Basic " + base64.b64encode(b"x-access-token:ghp_realvalue").decode(),
                 "GITHUB_TOKEN", id="basic-username"),
    pytest.param("https://basic.test/x", [("authorization", "Basic " + base64.b64encode(P_BASIC.encode()).decode())],
                 "authorization", "Basic " + base64.b64encode(b"alice:s3cret").decode(), "BASIC_PAIR",
                 id="basic-pair"),
]


@pytest.mark.parametrize("url, headers, name, value, token_ref", INJECTIONS)
def test_real_credential_replaces_placeholder(url, headers, name, value, token_ref):
    scanner = FakeScanner()
    addon, lines = make_addon(scanner)
    f = run(addon, make_flow(url=url, headers=headers, body=b'{"a": 1}'))
    assert f.response.status_code == 200
    assert f.request.headers.get_all(name) == [value]
    assert lines[0]["token_ref"] == token_ref
    logged = json.dumps(lines)
    secret = value.split()[-1]
    assert secret not in logged and secret not in "".join(scanner.texts)
    assert not any(p in logged for p in (P_ANTHROPIC, P_GITHUB, P_EXAMPLE, P_TOKEN, P_BASIC))


# -- scanning ----------------------------------------------------------------

def test_scanner_deny_names_findings_not_the_secret():
    finding = ("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)")
    scanner = FakeScanner(text=ScanResult("deny", (finding,)))
    addon, lines = make_addon(scanner)
    f = run(addon, make_flow(body=b'{"k": "AKIAIOSFODNN7EXAMPLE"}', headers=[("content-type", "application/json")]))
    assert f.response.status_code == 403
    assert body_of(f) == ("bottle: blocked: scanner found DLP-AWS Access ID: "
                          "Secret-like token detected (AWS Access ID)\n")
    assert lines[0]["scanner"] == ["DLP-AWS Access ID"]
    assert "AKIA" not in json.dumps(lines)


def test_scanner_sees_request_line_headers_raw_body_and_its_strings_but_not_the_route_credential():
    scanner = FakeScanner()
    addon, _ = make_addon(scanner)
    run(addon, make_flow(headers=[("x-api-key", P_ANTHROPIC), ("x-other", "visible"),
                                  ("content-type", "application/json")],
                         body=b'{"prompt": "hello"}'))
    assert scanner.urls == ["https://api.anthropic.com/v1/messages"]
    assert scanner.texts == [
        'POST /v1/messages HTTP/1.1\r\ncontent-length: 19\r\nx-api-key: \r\nx-other: visible\r\n'
        'content-type: application/json\r\n\r\n{"prompt": "hello"}',  # the request as it goes on the wire
        "prompt\nhello",  # and what a JSON parser reads from it, in document order
    ]


def test_scanner_audit_mode_logs_would_block():
    scanner = FakeScanner(url=ScanResult("deny", (("URL-entropy", "high entropy"),)))
    addon, lines = make_addon(scanner, scanner={**json.loads(policy_text())["scanner"], "mode": "audit"})
    f = run(addon, make_flow(body=b"x"))
    assert f.response.status_code == 200
    assert (lines[0]["decision"], lines[0]["scanner"]) == ("would_block", ["URL-entropy"])


def test_scanner_unavailable_fails_closed_with_503():
    addon, lines = make_addon(FakeScanner(error=ScannerUnavailable("scanner did not answer within 10s")))
    f = run(addon, make_flow(body=b"x"))
    assert (f.response.status_code, body_of(f)) == (
        503, "bottle: blocked: scanner unavailable: scanner did not answer within 10s\n")
    assert lines[0]["decision"] == "block"


@pytest.mark.parametrize("headers, body, status, reason", [
    ([("content-type", "application/octet-stream")], b"\xff\xfe\x00\x81", 415,
     "binary application/octet-stream body cannot be scanned"),
    ([("content-encoding", "compress")], b"abc", 415, "content encoding compress cannot be scanned"),
    ([], b"x" * 1001, 413, "request body of 1001 bytes exceeds the scan limit of 1000"),
])
def test_unscannable_body_is_refused(headers, body, status, reason):
    addon, _ = make_addon()
    f = make_flow(headers=headers, body=body)
    f.request.headers.pop("content-length", None)  # as for a chunked upload
    f = run(addon, f)
    assert (f.response.status_code, body_of(f)) == (status, f"bottle: blocked: {reason}\n")


def test_scan_body_false_rule_is_decided_in_requestheaders_and_streams():
    scanner = FakeScanner()
    addon, lines = make_addon(scanner)
    f = make_flow(url="https://github.com/org/repo.git/git-receive-pack",
                  headers=[("content-type", "application/x-git-receive-pack-request")])
    with taddons.context(addon):
        asyncio.run(addon.requestheaders(f))
        assert f.response is None and callable(f.request.stream)
        assert f.request.headers["authorization"].startswith("Basic ")
        # Held back only as long as a placeholder could still be starting, then flushed.
        assert f.request.stream(b"\x00" * 10) + f.request.stream(b"") == [b"\x00" * 10]
        asyncio.run(addon.request(f))  # after streaming: nothing more to decide
    assert f.response is None
    assert scanner.texts == ["POST /org/repo.git/git-receive-pack HTTP/1.1\r\ncontent-length: 0\r\n"
                             "content-type: application/x-git-receive-pack-request\r\n\r\n"]
    assert f.metadata["bottle"].bytes_up == 10


def test_response_is_streamed_and_counted():
    addon, lines = make_addon()
    f = run(addon, make_flow(url="https://raw.githubusercontent.com/a?token=abc&x", method="GET"))
    assert callable(f.response.stream)
    line = lines[0]
    assert set(line) == LOG_KEYS
    assert (line["path"], line["bytes_down"], line["decision"], line["rule"], line["client"]) == (
        "/a?token=REDACTED&REDACTED", len(b"upstream says hi"), "allow", "egress.allow[1]", AGENT)
    assert line["time"].endswith("Z") and line["bottle"] == "bottle-demo-3f9a2c"


# -- discover mode -----------------------------------------------------------

def test_discover_mode_allows_and_logs_would_block():
    addon, lines = make_addon(mode="discover")
    f = run(addon, make_flow(url="https://evil.test/x"))
    assert f.response.status_code == 200
    assert (lines[0]["decision"], lines[0]["reason"]) == ("would_block", "no rule allows host evil.test")


def test_discover_mode_still_checks_identity_fronting_and_ip_literals():
    addon, _ = make_addon(mode="discover")
    assert run(addon, make_flow(peer="10.0.0.1")).response.status_code == 403
    assert run(addon, make_flow(sni="evil.test")).response.status_code == 421
    assert run(addon, make_flow(url="https://10.0.0.1/x", sni="")).response.status_code == 403


# -- CONNECT -----------------------------------------------------------------

def connect_flow(host, port=443, peer=AGENT):
    f = tflow.tflow()
    f.live = True
    f.client_conn.peername = (peer, 40000)
    f.request = http.Request.make("CONNECT", "http://x/")
    f.request.host, f.request.port, f.request.path = host, port, ""
    f.response = None
    return f


@pytest.mark.parametrize("host, port, peer, status, reason", [
    ("api.anthropic.com", 443, "172.20.0.9", 403, "client 172.20.0.9 is not this bottle's agent"),
    ("evil.test", 443, AGENT, 403, "no rule allows host evil.test"),
    ("10.0.0.1", 443, AGENT, 403, "IP literal destination 10.0.0.1 is not allowed; name the host"),
    ("::1", 443, AGENT, 403, "IP literal destination ::1 is not allowed; name the host"),
    ("api.anthropic.com", 22, AGENT, 403, "port 22 is not allowed for host api.anthropic.com by egress.allow[0]"),
    ("api.anthropic.com", 443, AGENT, None, None),
    ("API.Anthropic.COM.", 443, AGENT, None, None),
])
def test_connect_is_checked_before_any_upstream_connection(host, port, peer, status, reason):
    addon, lines = make_addon()
    f = connect_flow(host, port, peer)
    with taddons.context(addon):
        asyncio.run(addon.http_connect(f))
    if status is None:
        assert f.response is None and lines == []
    else:
        assert (f.response.status_code, body_of(f)) == (status, f"bottle: blocked: {reason}\n")
        assert (lines[0]["method"], lines[0]["status"], lines[0]["reason"]) == ("CONNECT", status, reason)


def test_discover_mode_connect_to_unknown_host_passes_but_ip_literal_does_not():
    addon, _ = make_addon(mode="discover")
    ok, ip = connect_flow("evil.test"), connect_flow("192.168.1.1")
    with taddons.context(addon):
        asyncio.run(addon.http_connect(ok))
        asyncio.run(addon.http_connect(ip))
    assert ok.response is None and ip.response.status_code == 403


# -- upstream IP guard -------------------------------------------------------

class _Server:
    def __init__(self, address):
        self.address, self.error = address, None


class _Data:
    def __init__(self, address):
        self.server = _Server(address)


@pytest.mark.parametrize("address, error", [
    (("api.anthropic.com", 443), None),
    (("pipelock", 9090), None),
    (("evil.test", 443), "bottle: evil.test is not an allowed upstream"),
    (("api.anthropic.com", 444), "bottle: api.anthropic.com is not an allowed upstream"),
    (("10.1.2.3", 443), "bottle: 10.1.2.3 is not an allowed upstream"),
])
def test_server_connect_refuses_unapproved_upstreams(address, error):
    addon, _ = make_addon()
    data = _Data(address)
    asyncio.run(addon.server_connect(data))
    assert data.server.error == error


# -- failing closed ----------------------------------------------------------

@pytest.mark.parametrize("hook", ["http_connect", "requestheaders", "request"])
def test_hook_exception_blocks_with_500(hook):
    addon, _ = make_addon(FakeScanner(error=RuntimeError("boom")))
    addon.policy = None if hook != "request" else addon.policy
    f = connect_flow("api.anthropic.com") if hook == "http_connect" else make_flow(body=b"x")
    with taddons.context(addon):
        asyncio.run(getattr(addon, hook)(f))
    assert f.response.status_code == 500
    assert body_of(f) == f"bottle: blocked: internal error in bottle's {hook} check (RuntimeError)\n"


def test_responseheaders_exception_kills_the_flow(monkeypatch):
    addon, _ = make_addon()
    f = make_flow()
    f.response = http.Response.make(200, b"")
    monkeypatch.setattr(responses, "_count_down", lambda *a: 1 / 0)
    with taddons.context(addon):
        asyncio.run(addon.responseheaders(f))
    assert f.error is not None and f.error.msg == "Connection killed."


def test_server_connect_exception_refuses(monkeypatch):
    addon, _ = make_addon()
    monkeypatch.setattr(upstream.decide, "upstream_allowance", lambda *a: 1 / 0)
    data = _Data(("api.anthropic.com", 443))
    asyncio.run(addon.server_connect(data))
    assert data.server.error == "bottle: internal error in bottle's server_connect check (ZeroDivisionError)"


def test_websocket_history_is_trimmed_to_the_last_message():
    addon, _ = make_addon()
    f = tflow.tflow(ws=True)
    assert len(f.websocket.messages) > 1
    asyncio.run(addon.websocket_message(f))
    assert len(f.websocket.messages) == 1


def test_discover_mode_never_skips_body_scanning_for_a_request_no_rule_allows():
    scanner = FakeScanner()
    addon, lines = make_addon(scanner, mode="discover")
    f = run(addon, make_flow(url="https://github.com/other/repo.git/x", body=b"data"))
    assert f.request.stream is False or f.request.stream is None
    assert scanner.texts and scanner.texts[0].endswith("data")
    assert lines[0]["decision"] == "would_block"
