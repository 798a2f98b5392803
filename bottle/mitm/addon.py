"""The mitmproxy addon: thin hooks that turn flows into data, ask decide/bodies/scanner,
and turn verdicts into responses. Every hook fails closed."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import http
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.websocket import WebSocketMessage

from bottle.mitm import decide, git, github
from bottle.mitm.bodies import UnscannableBody, decode_content, unpack_body
from bottle.mitm.policy import Policy, Route
from bottle.mitm.scanner import ScannerUnavailable, scan_request

_META = "bottle"
logger = logging.getLogger(__name__)


def emit_stdout(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def make_block_response(status: int, reason: str, rule_id: str | None, kind: str = "text") -> http.Response:
    """A refusal the client can show: plain text, GitHub-style JSON, or a git pkt-line ERR."""
    headers = {"content-type": "text/plain; charset=utf-8", "x-bottle-decision": "block"}
    body = f"bottle: blocked: {reason}\n".encode()
    if kind == "json":
        headers["content-type"] = "application/json; charset=utf-8"
        body = json.dumps({"message": f"bottle: blocked: {reason}"}).encode()
    elif kind.startswith("git-"):
        # git shows `fatal: remote error: <message>` for an ERR packet, but only a bare
        # status line for an HTTP error (https://git-scm.com/docs/http-protocol).
        status = 200
        suffix = "advertisement" if kind.endswith("-advertisement") else "result"
        service = kind[4:].rsplit("-", 1)[0]
        headers["content-type"] = f"application/x-{service}-{suffix}"
        headers["cache-control"] = "no-cache"
        body = git.pkt(f"ERR bottle: {reason}\n".encode())
    if rule_id:
        headers["x-bottle-rule"] = rule_id
    return http.Response.make(status, body, headers)


def make_push_report(report: bytes, rule_id: str) -> http.Response:
    return http.Response.make(200, report, {
        "content-type": "application/x-git-receive-pack-result", "cache-control": "no-cache",
        "x-bottle-decision": "block", "x-bottle-rule": rule_id,
    })


def _state(flow: http.HTTPFlow) -> dict[str, Any]:
    return flow.metadata.setdefault(
        _META,
        {"decided": False, "decision": "allow", "rule": None, "reason": "", "scanner": [],
         "token_ref": None, "bytes_up": 0, "bytes_down": 0, "scrubbed": 0, "logged": False},
    )


def _fail_closed(hook: Callable) -> Callable:
    """Any exception in a hook blocks the flow with 500; mitmproxy itself would let it through."""

    @functools.wraps(hook)
    async def wrapper(self: BottleEgress, flow: http.HTTPFlow) -> None:
        try:
            await hook(self, flow)
        except Exception as e:
            print(f"bottle: {hook.__name__} failed, blocking: {traceback.format_exc()}", file=sys.stderr, flush=True)
            self._refuse_after_error(flow, hook.__name__, e)

    return wrapper


class BottleEgress:
    """Enforces one bottle's policy on every request (see docs/log-format.md for the log)."""

    def __init__(
        self,
        policy: Policy | None = None,
        scanner: Any = None,
        env: Mapping[str, str] | None = None,
        emit: Callable[[dict[str, Any]], None] = emit_stdout,
    ) -> None:
        self.policy = policy
        self.scanner = scanner
        self.env = os.environ if env is None else env
        self.emit = emit

    def set_policy(self, policy: Policy, scanner: Any) -> None:
        self.policy, self.scanner = policy, scanner

    # -- hooks -------------------------------------------------------------

    @_fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        policy = self._policy()
        st = _state(flow)
        verdict = decide.check_client(policy, _peer_ip(flow))
        if verdict.allowed:
            verdict = decide.check_connect(policy, flow.request.host, flow.request.port)
        if not verdict.allowed:
            self._block(flow, verdict)
            self._log(flow)
        elif verdict.would_block:
            st.update(decision="would_block", rule=verdict.rule_id, reason=verdict.reason)

    @_fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        policy = self._policy()
        st = _state(flow)
        req = flow.request
        route = decide.find_route(policy, req.host, req.method, req.path)
        headers = [(k, v) for k, v in req.headers.items(multi=True)]
        checks = [
            lambda: decide.check_client(policy, _peer_ip(flow)),
            lambda: decide.check_fronting(req.host, flow.client_conn.sni, req.host_header),
            lambda: decide.check_request(policy, req.host, req.port, req.method, req.path),
            lambda: decide.check_credentials(policy, route, req.scheme, headers, req.url),
        ]
        rule_id = None
        for check in checks:
            verdict = check()
            if not verdict.allowed:
                return self._block(flow, verdict)
            if verdict.would_block:
                self._would_block(st, verdict.rule_id, verdict.reason)
            else:
                rule_id = rule_id or verdict.rule_id
        st["rule"] = st["rule"] or rule_id
        host = decide.normalize_host(req.host)
        git_verdict = git.check_request(policy.git, host, req.path)
        if git_verdict is not None:
            if not git_verdict.allowed:
                return self._block(flow, decide.block(403, git_verdict.reason, git_verdict.rule_id),
                                   kind=_git_kind(req.path))
            st["rule"] = git_verdict.rule_id
        if host == github.HOST:
            if (refusal := github.check(policy.github_deny, req.method, req.path, None)) is not None:
                return self._block(flow, decide.block(403, refusal.reason, refusal.rule_id), kind="json")
        if route is not None:
            st["token_ref"] = route.token_ref
            try:
                decide.credential_header(route, self.env)
            except decide.CredentialMissingError as e:
                return self._block(flow, decide.block(403, str(e), route.id))
        if git_verdict is not None and git.is_push(req.method, req.path):
            return await self._start_push(flow, route)
        graphql = host == github.HOST and github.is_graphql(req.method, req.path)
        rule = next((r for r in policy.rules if r.id == rule_id), None)
        st["scan_body"] = rule is None or rule.scan_body  # for the messages of a websocket
        if rule is not None and not rule.scan_body and not graphql:
            # Streamed bodies reach upstream before `request` runs, so decide everything now.
            if await self._scan(flow, route, []):
                self._inject(flow, route)
                st["decided"] = True
                req.stream = self._counter(st, "bytes_up")
            return
        length = req.headers.get("content-length", "")
        if length.isdigit() and int(length) > policy.scanner.max_body_bytes:
            return self._block(flow, decide.block(
                413, f"request body of {int(length)} bytes exceeds the scan limit of {policy.scanner.max_body_bytes}", rule_id
            ))
        st["route"] = route

    @_fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = _state(flow)
        if flow.response is not None or st["decided"]:
            return
        policy = self._policy()
        req = flow.request
        route: Route | None = st.pop("route", None)
        body = req.raw_content or b""
        st["bytes_up"] = len(body)
        if decide.normalize_host(req.host) == github.HOST and github.is_graphql(req.method, req.path):
            try:
                plain = decode_content(body, req.headers.get("content-encoding"), policy.scanner.max_body_bytes)
            except UnscannableBody as e:
                return self._block(flow, decide.block(e.status, e.reason, st["rule"]), kind="json")
            if (refusal := github.check(policy.github_deny, req.method, req.path, plain)) is not None:
                return self._block(flow, decide.block(403, refusal.reason, refusal.rule_id), kind="json")
        try:
            strings = unpack_body(
                body, req.headers.get("content-type"), req.headers.get("content-encoding"),
                policy.scanner.max_body_bytes,
            )
        except UnscannableBody as e:
            return self._block(flow, decide.block(e.status, e.reason, st["rule"]))
        if await self._scan(flow, route, strings):
            self._inject(flow, route)
            st["decided"] = True

    @_fail_closed
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = _state(flow)
        push: git.PushInspector | None = st.get("push")
        if push is not None and push.refusals:
            return  # upstream's answer to the empty body is replaced in `response`
        if flow.response is None or st.get("blocked"):
            return
        scrubs = st.get("scrubs")
        if not scrubs:
            flow.response.stream = self._counter(st, "bytes_down")
            return
        resp = flow.response
        has_body = expected_http_body_size(flow.request, resp) != 0
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if has_body and encoding not in ("", "identity"):
            return self._refuse_response(flow, decide.block(
                502, "compressed response to a credentialed request cannot be checked for the credential",
                st["rule"]))
        scrubber = decide.Scrubber(scrubs)
        resp.headers.fields = tuple((name, scrubber.replace(value)) for name, value in resp.headers.fields)
        st["scrubbed"] = scrubber.count
        st["scrubber"] = scrubber
        if has_body:
            # Scrubbing changes the body's length: an HTTP/1.1 agent gets it chunked, an
            # HTTP/2 one framed by HTTP/2, an HTTP/1.0 exchange ends when the connection closes.
            resp.headers.pop("content-length", None)
            if flow.request.http_version == "HTTP/1.1" and resp.http_version != "HTTP/1.0":
                resp.headers["transfer-encoding"] = "chunked"
            resp.stream = self._scrub_stream(st, scrubber)

    @_fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        st = _state(flow)
        push: git.PushInspector | None = st.get("push")
        if push is not None and push.refusals:
            rule_id, reason = push.first_refusal
            st.update(decision="block", rule=rule_id, reason=reason, blocked=True)
            flow.response = make_push_report(push.report(), rule_id)
        if (refusal := st.get("refused_response")) is not None:
            # mitmproxy fills a response that was not streamed with upstream's body.
            flow.response = make_block_response(*refusal)
        elif (scrubber := st.get("scrubber")) is not None and flow.response is not None:
            if flow.response.trailers:
                trailers = flow.response.trailers
                trailers.fields = tuple((name, scrubber.replace(value)) for name, value in trailers.fields)
            st["scrubbed"] = scrubber.count
        self._log(flow)

    @_fail_closed
    async def error(self, flow: http.HTTPFlow) -> None:
        st = _state(flow)
        if not st["reason"] and flow.error:
            st["reason"] = f"proxy error: {flow.error.msg}"
        self._log(flow, status=flow.response.status_code if flow.response else 502)

    async def server_connect(self, data: Any) -> None:
        try:
            host, port = data.server.address
            policy = self._policy()
            if (decide.normalize_host(host), port) == decide.scanner_target(policy):
                return
            allowance = decide.upstream_allowance(policy, host, port)
            if allowance is None:
                data.server.error = f"bottle: {host} is not an allowed upstream"
            elif decide.is_ip_literal(host) and not decide.is_permitted_upstream_ip(host, allowance):
                data.server.error = f"bottle: upstream address {host} is not allowed"
        except Exception as e:
            print(f"bottle: server_connect failed, refusing: {traceback.format_exc()}", file=sys.stderr, flush=True)
            data.server.error = f"bottle: internal error in upstream check ({type(e).__name__})"

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Scan each client message before mitmproxy forwards it; server messages pass.

        mitmproxy assembles a whole message (all its frames) in memory before this hook, and
        holds it, and everything after it on this websocket, until the hook returns. Only
        the scan limit bounds what is sent to the scanner, not what mitmproxy buffers.
        """
        message: WebSocketMessage | None = None
        try:
            assert flow.websocket is not None
            message = flow.websocket.messages[-1]
            # mitmproxy keeps every message of a live websocket; keep only the newest.
            del flow.websocket.messages[:-1]
            if message.from_client:
                await self._check_ws_message(flow, message)
        except Exception:
            print(f"bottle: websocket_message failed, dropping: {traceback.format_exc()}", file=sys.stderr, flush=True)
            if message is not None:
                message.drop()
            flow.kill()

    # -- helpers -----------------------------------------------------------

    def _policy(self) -> Policy:
        if self.policy is None:
            raise RuntimeError("no policy loaded")
        return self.policy

    async def _scan(self, flow: http.HTTPFlow, route: Route | None, body_strings: list[str]) -> bool:
        """Ask the scanner about URL + headers + body strings; block and return False on deny."""
        policy = self._policy()
        st = _state(flow)
        req = flow.request
        skip = decide.credential_header_name(route) if route else None
        header_values = [v for k, v in req.headers.items(multi=True) if k.lower() != skip]
        text = "\n".join(header_values + body_strings)
        if self.scanner is None:
            self._block(flow, decide.block(503, "scanner unavailable: no scanner configured", st["rule"]))
            return False
        try:
            result = await scan_request(self.scanner, req.url, text)
        except ScannerUnavailable as e:
            self._block(flow, decide.block(503, f"scanner unavailable: {e.reason}", st["rule"]))
            return False
        if result.decision != "deny":
            return True
        st["scanner"] = [rule for rule, _ in result.findings]
        reason = "scanner found " + "; ".join(f"{rule}: {msg}" for rule, msg in result.findings)
        if policy.scanner.mode == "audit":
            self._would_block(st, st["rule"], reason)
            return True
        self._block(flow, decide.block(403, reason, st["rule"]))
        return False

    async def _check_ws_message(self, flow: http.HTTPFlow, message: WebSocketMessage) -> None:
        policy = self._policy()
        st = _state(flow)
        limit = policy.scanner.max_body_bytes
        if not message.is_text:
            if not st.get("scan_body", True):
                return
            return self._drop_ws(flow, message, decide.block(415, "binary websocket message cannot be scanned"))
        if len(message.content) > limit:
            return self._drop_ws(flow, message, decide.block(
                413, f"websocket message of {len(message.content)} bytes exceeds the scan limit of {limit}"))
        if self.scanner is None:
            return self._drop_ws(flow, message, decide.block(503, "scanner unavailable: no scanner configured"))
        try:
            result = await self.scanner.scan_text(message.content.decode("utf-8", "replace"))
        except ScannerUnavailable as e:
            return self._drop_ws(flow, message, decide.block(503, f"scanner unavailable: {e.reason}"))
        if result.decision != "deny":
            return
        findings = [rule for rule, _ in result.findings]
        reason = "scanner found " + "; ".join(f"{rule}: {msg}" for rule, msg in result.findings)
        if policy.scanner.mode == "audit":
            return self._log_ws(flow, message, 101, "would_block", reason, findings)
        self._drop_ws(flow, message, decide.block(403, reason), findings)

    def _drop_ws(self, flow: http.HTTPFlow, message: WebSocketMessage, verdict: decide.Verdict,
                 findings: list[str] | None = None) -> None:
        message.drop()
        self._log_ws(flow, message, verdict.status, "block", verdict.reason, findings or [])

    def _log_ws(self, flow: http.HTTPFlow, message: WebSocketMessage, status: int, decision: str,
                reason: str, findings: list[str]) -> None:
        line = self._line(flow, message.timestamp, status)
        line.update(method="WS", bytes_up=len(message.content), bytes_down=0, decision=decision,
                    reason=reason, scanner=findings, scrubbed=0)
        self.emit(line)

    def _refuse_response(self, flow: http.HTTPFlow, verdict: decide.Verdict) -> None:
        """Answer with bottle's refusal instead of upstream's response, whose head is in.

        Upstream's body is discarded as it arrives; the refusal goes out with its first
        chunk (or is set again in `response` when nothing was streamed).
        """
        st = _state(flow)
        st.update(decision="block", reason=verdict.reason, blocked=True)
        st["rule"] = verdict.rule_id or st["rule"]
        st["refused_response"] = (verdict.status, verdict.reason, st["rule"])
        flow.response = make_block_response(verdict.status, verdict.reason, st["rule"])
        pending = [flow.response.raw_content or b""]

        def discard(chunk: bytes) -> list[bytes]:
            out = [c for c in pending if c]
            pending.clear()
            return out

        flow.response.stream = discard

    @staticmethod
    def _scrub_stream(st: dict[str, Any], scrubber: decide.Scrubber) -> Callable[[bytes], list[bytes]]:
        # A list, never b"": an empty chunk in a chunked body is its terminator.
        def scrub(chunk: bytes) -> list[bytes]:
            out = scrubber.feed(chunk)
            st["bytes_down"] += len(out)
            st["scrubbed"] = scrubber.count
            return [out] if out else []

        return scrub

    async def _start_push(self, flow: http.HTTPFlow, route: Route | None) -> None:
        """Stream a push through a PushInspector: nothing reaches upstream until it is allowed.

        mitmproxy sends the request head upstream when streaming starts, so a refused push
        still sends upstream a head with an empty chunked body, which git answers without
        changing anything; its answer is replaced by bottle's report in `response`.
        """
        policy = self._policy()
        st = _state(flow)
        req = flow.request
        encoding = req.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return self._block(flow, decide.block(415, f"git push with content-encoding {encoding} is not supported",
                                                  st["rule"]))
        if not await self._scan(flow, route, []):
            return
        assert policy.git is not None
        self._inject(flow, route)
        inspector = git.PushInspector(policy.git)
        st.update(decided=True, push=inspector)
        # The body's length is unknown until the decision (a refused push sends an empty
        # body), so an HTTP/1 upstream gets it chunked; mitmproxy strips the header when
        # it converts an HTTP/1 request for an HTTP/2 upstream.
        req.headers.pop("content-length", None)
        if not (req.is_http2 and flow.server_conn.alpn == b"h2"):
            req.headers["transfer-encoding"] = "chunked"
        req.stream = self._push_stream(st, inspector)

    @staticmethod
    def _push_stream(st: dict[str, Any], inspector: git.PushInspector) -> Callable[[bytes], list[bytes]]:
        released = False

        # A list, never b"": mitmproxy sends each returned chunk, and an empty chunk in a
        # chunked body is its terminator.
        def stream(chunk: bytes) -> list[bytes]:
            nonlocal released
            st["bytes_up"] += len(chunk)
            if released:
                return [chunk] if chunk else []
            try:
                if chunk:
                    inspector.feed(chunk)
                else:
                    inspector.finish()
            except Exception as e:
                print(f"bottle: push inspection failed, refusing: {traceback.format_exc()}", file=sys.stderr, flush=True)
                inspector.refuse_all("git.push", f"bottle: internal error reading the push ({type(e).__name__})")
            if not inspector.decided or inspector.refusals:
                return []
            released = True
            out, inspector.held = bytes(inspector.held), bytearray()
            return [out] if out else []

        return stream

    def _inject(self, flow: http.HTTPFlow, route: Route | None) -> None:
        if route is None:
            return
        name, value = decide.credential_header(route, self.env)
        flow.request.headers.pop(name, None)
        flow.request.headers[name] = value
        # The answer is scrubbed of the credential on its way back, which needs a body
        # bottle can read: a compressed one is refused in `responseheaders`.
        flow.request.headers["accept-encoding"] = "identity"
        _state(flow)["scrubs"] = decide.credential_scrubs(route, self.env)

    def _block(self, flow: http.HTTPFlow, verdict: decide.Verdict, kind: str = "text") -> None:
        st = _state(flow)
        st.update(decision="block", reason=verdict.reason, blocked=True, decided=True)
        st["rule"] = verdict.rule_id or st["rule"]
        flow.request.stream = False
        flow.response = make_block_response(verdict.status, verdict.reason, st["rule"], kind)

    def _would_block(self, st: dict[str, Any], rule_id: str | None, reason: str) -> None:
        if st["decision"] != "would_block":
            st.update(decision="would_block", rule=rule_id or st["rule"], reason=reason)

    def _refuse_after_error(self, flow: http.HTTPFlow, hook: str, error: Exception) -> None:
        reason = f"internal error in bottle's {hook} check ({type(error).__name__})"
        try:
            if hook in ("http_connect", "requestheaders", "request"):
                self._block(flow, decide.block(500, reason))
                if hook == "http_connect":
                    self._log(flow)
                return
            _state(flow).update(decision="block", reason=reason)
            if flow.killable:
                flow.kill()
        except Exception:
            print(f"bottle: could not refuse flow cleanly: {traceback.format_exc()}", file=sys.stderr, flush=True)
            if flow.killable:
                flow.kill()

    @staticmethod
    def _counter(st: dict[str, Any], key: str) -> Callable[[bytes], bytes]:
        def count(chunk: bytes) -> bytes:
            st[key] += len(chunk)
            return chunk

        return count

    def _log(self, flow: http.HTTPFlow, status: int | None = None) -> None:
        st = _state(flow)
        if st["logged"]:
            return
        st["logged"] = True
        if status is None:
            status = flow.response.status_code if flow.response else 0
        if st.get("blocked") and flow.response is not None:
            st["bytes_down"] = len(flow.response.raw_content or b"")
        self.emit(self._line(flow, flow.request.timestamp_start or time.time(), status))

    def _line(self, flow: http.HTTPFlow, started: float, status: int) -> dict[str, Any]:
        st = _state(flow)
        req = flow.request
        return {
            "time": _rfc3339(started),
            "bottle": self.policy.bottle if self.policy else None,
            "client": _peer_ip(flow),
            "method": req.method,
            "scheme": req.scheme,
            "host": req.host,
            "port": req.port,
            "path": decide.redact_query(req.path) if req.method != "CONNECT" else "",
            "status": status,
            "bytes_up": st["bytes_up"],
            "bytes_down": st["bytes_down"],
            "duration_ms": max(0, round((time.time() - started) * 1000)),
            "decision": st["decision"],
            "rule": st["rule"],
            "reason": st["reason"],
            "scanner": st["scanner"],
            "token_ref": st["token_ref"],
            "scrubbed": st["scrubbed"],
        }


def _git_kind(path: str) -> str:
    request = git.classify(path)
    service = request.service if request else "git-upload-pack"
    if path.split("?", 1)[0].endswith("/info/refs"):
        return f"git-{service}-advertisement"
    if service == "git-receive-pack":
        return "text"  # a push refused on its URL: git shows the HTTP status
    return f"git-{service}-result"


def _peer_ip(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return decide.normalize_client_ip(str(peer[0])) if peer else "unknown"


def _rfc3339(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
