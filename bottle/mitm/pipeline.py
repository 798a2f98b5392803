"""The request pipeline: the one addon whose order is the security argument.

Every request passes these steps top-down, and the first refusal ends it:

    client      the connection comes from this bottle's agent
    target      the request names its tunnel's host (origin-form, or the tunnel's authority)
    fronting    CONNECT target, TLS SNI and Host name the same host (a transparently
                captured connection has no CONNECT target: SNI and Host must agree)
    allow       a rule allows host, port, method and path (discover: logged, passed);
                the scanner itself is never a destination
    credentials placeholders stay on their routes; the real credential is available
    git/GitHub  repository allowlist and push policy; GitHub API refusals
    body        bounded, decoded and unpacked into the texts pipelock will see; no
                placeholder off its route
    scan        pipelock's verdict on the request line, headers, body and trailers
                (audit: logged, passed)
    inject      only now is the placeholder replaced with the real credential

Headers-stage steps run in `requestheaders`, body-stage steps in `request`; a body that
streams (git pushes, `scan_body: false`) is decided in `requestheaders` (its bytes leave
before `request` runs) and guarded while it streams. The decisions themselves are pure
functions in decide, credentials, git, github and bodies; this module turns flows into
their arguments and their verdicts into answers.
"""

from __future__ import annotations

import dataclasses

from mitmproxy import http

from bottle.mitm import credentials, decide, git, github, push
from bottle.mitm import incremental, transparent
from bottle.mitm.bodies import UnscannableBody, decode_content, request_head, request_texts, unpack_body
from bottle.mitm.policy import AllowRule, Policy, normalize_host
from bottle.mitm.scanner import ScannerUnavailable
from bottle.mitm.state import FlowState, Runtime, fail_closed, refuse

Refusal = tuple[decide.Verdict, str]  # the verdict and how to show it (text, json, git-…)


@dataclasses.dataclass
class _Request:
    """One request as the steps see it."""

    flow: http.HTTPFlow
    st: FlowState
    policy: Policy
    host: str
    rule: AllowRule | None = None

    @property
    def req(self) -> http.Request:
        return self.flow.request

    @property
    def is_graphql(self) -> bool:
        return self.host == github.HOST and github.is_graphql(self.req.method, self.req.path)


class RequestPipeline:
    """Enforces one bottle's policy on every request before anything goes upstream."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        policy = self.runtime.require_policy()
        verdict = decide.check_client(policy, peer_ip(flow))
        if verdict.allowed:
            verdict = decide.check_connect(policy, flow.request.host, flow.request.port)
        if not verdict.allowed:
            refuse(flow, verdict)
        elif verdict.would_block:
            st.would_block(verdict.rule_id, verdict.reason)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        r = self._request(flow)
        for step in (self._client, self._target, self._fronting, self._allow, self._credentials, self._git,
                     self._github_api):
            if (refusal := step(r)) is not None:
                return refuse(flow, *refusal)
        await self._headers_decide_body(r)

    @fail_closed
    async def bottle_request_streamed(self, flow: http.HTTPFlow) -> None:
        """A streamed body has arrived (bottle.mitm.patches); its last bytes, trailers and
        end have not gone: cut the request off if the stream was refused on the way or
        its trailers carry a secret."""
        r = self._request(flow)
        trailers = self._trailers(r)
        if not r.st.blocked and trailers and (refusal := await self._scan(r, [], trailers, body=False)) is not None:
            verdict, _ = refusal
            r.st.decision, r.st.reason, r.st.blocked = "block", verdict.reason, True
        if r.st.blocked:
            flow.kill()

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if flow.response is not None or st.decided:
            return
        r = self._request(flow)
        body = r.req.raw_content or b""
        st.bytes_up = len(body)
        if (refusal := self._github_body(r, body)) is not None:
            return refuse(flow, *refusal)
        try:
            texts = unpack_body(body, r.req.headers.get("content-type"), r.req.headers.get("content-encoding"),
                                r.policy.scanner.max_body_bytes)
        except UnscannableBody as e:
            return refuse(flow, decide.block(e.status, e.reason, st.rule), "text")
        if (refusal := self._judge(r, credentials.check_placeholders_in(r.policy, st.route,
                                                                         ["\n".join(texts)]))) is not None:
            return refuse(flow, *refusal)
        if (refusal := await self._scan(r, texts, self._trailers(r))) is not None:
            return refuse(flow, *refusal)
        self._inject(r)

    # -- headers-stage steps: each returns a refusal or None ------------------------------

    def _client(self, r: _Request) -> Refusal | None:
        return self._judge(r, decide.check_client(r.policy, peer_ip(r.flow)))

    def _target(self, r: _Request) -> Refusal | None:
        """Servers route on an absolute-form target or `:path`, whatever the tunnel: inside a
        tunnel the target must be origin-form or name the tunnel itself (RFC 9112 3.2.2)."""
        verdict = decide.check_target(r.req.host, r.req.port, r.req.scheme, r.req.authority, r.req.path,
                                      r.req.method)
        if not verdict.allowed:
            r.st.logged_host = decide.authority_host(r.req.authority) or r.st.logged_host
            return verdict, "text"
        if r.req.authority and not (r.req.is_http2 or r.req.is_http3):
            # What goes upstream is origin-form: HTTP/1 sends a non-empty authority as an
            # absolute-form target; the Host header already names the same host.
            if "host" not in r.req.headers:
                r.req.headers["host"] = r.req.authority
            r.req.authority = ""
        return None

    def _fronting(self, r: _Request) -> Refusal | None:
        # A captured connection has no CONNECT target: its host came from the SNI (or Host).
        connect_host = None if transparent.is_transparent(r.flow.client_conn) else r.req.host
        verdict = decide.check_fronting(connect_host, r.flow.client_conn.sni, r.req.host_header)
        if not verdict.allowed:
            r.st.logged_host = decide.authority_host(r.req.host_header or "")  # where the request meant to go
        return self._judge(r, verdict)

    def _allow(self, r: _Request) -> Refusal | None:
        verdict = decide.check_request(r.policy, r.req.host, r.req.port, r.req.method, r.req.path)
        if verdict.allowed and not verdict.would_block:
            r.rule = next((rule for rule in r.policy.allow if rule.id == verdict.rule_id), None)
        return self._judge(r, verdict)

    def _credentials(self, r: _Request) -> Refusal | None:
        route = r.st.route = credentials.find_route(r.policy, r.req.host, r.req.method, r.req.path)
        headers = list(r.req.headers.items(multi=True))
        if (refusal := self._judge(r, credentials.check_credentials(r.policy, route, r.req.scheme, headers,
                                                                       r.req.url))) is not None:
            return refusal
        if route is not None:
            r.st.token_ref = route.token_ref
            try:
                credentials.credential_header(route, self.runtime.env)
            except credentials.CredentialMissingError as e:
                return decide.block(403, str(e), route.id), "text"
        return None

    def _git(self, r: _Request) -> Refusal | None:
        verdict = git.check_request(r.policy.git, r.host, r.req.path)
        if verdict is None:
            return None
        if not verdict.allowed:
            return decide.block(403, verdict.reason, verdict.rule_id), git_refusal_kind(r.req.path)
        r.st.rule = verdict.rule_id
        return None

    def _github_api(self, r: _Request) -> Refusal | None:
        if r.host != github.HOST:
            return None
        refusal = (github.check_headers(r.req.method, r.req.headers.items(multi=True))
                   or github.check(r.policy.github_deny, r.policy.git, r.req.method, r.req.path, None))
        if refusal is not None:
            return decide.block(403, refusal.reason, refusal.rule_id), "json"
        return None

    def _judge(self, r: _Request, verdict: decide.Verdict) -> Refusal | None:
        if not verdict.allowed:
            return verdict, "text"
        if verdict.would_block:
            r.st.would_block(verdict.rule_id, verdict.reason)
        elif r.st.rule is None:
            r.st.rule = verdict.rule_id
        return None

    async def _headers_decide_body(self, r: _Request) -> None:
        """A body that streams is decided now; any other waits for `request`, bounded."""
        r.st.scan_body = r.rule is None or r.rule.scan_body  # for the messages of a websocket
        if git.check_request(r.policy.git, r.host, r.req.path) is not None and git.is_push(r.req.method, r.req.path):
            refusal = push.check_encoding(r.req, r.st.rule)
            if refusal is None:
                refusal = await self._scan(r, [], [], body=False)
            if refusal is not None:
                return refuse(r.flow, *refusal)
            self._inject(r)
            return push.start(r.flow, r.st, r.policy, self.runtime.scanner)
        if not r.st.scan_body and not r.is_graphql and not github.needs_body(r.host, r.req.method, r.req.path):
            if (refusal := await self._scan(r, [], [], body=False)) is not None:
                return refuse(r.flow, *refusal)
            self._inject(r)
            r.req.stream = credentials.guarded_stream(r.st, r.policy)
            return
        length = r.req.headers.get("content-length", "")
        limit = r.policy.scanner.max_body_bytes
        if length.isdigit() and int(length) > limit:
            refuse(r.flow, decide.block(413, f"request body of {int(length)} bytes exceeds the scan limit of "
                                             f"{limit}", r.st.rule))

    # -- body-stage steps -----------------------------------------------------------------

    def _github_body(self, r: _Request, body: bytes) -> Refusal | None:
        if not (r.is_graphql or github.needs_body(r.host, r.req.method, r.req.path)):
            return None
        try:
            plain = decode_content(body, r.req.headers.get("content-encoding"), r.policy.scanner.max_body_bytes)
        except UnscannableBody as e:
            return decide.block(e.status, e.reason, r.st.rule), "json"
        refusal = github.check(r.policy.github_deny, r.policy.git, r.req.method, r.req.path, plain)
        if refusal is not None:
            return decide.block(403, refusal.reason, refusal.rule_id), "json"
        return None

    async def _scan(self, r: _Request, body_texts: list[str], trailers: list[tuple[str, str]], *,
                    body: bool = True) -> Refusal | None:
        """pipelock's verdict on everything that goes upstream; an error blocks."""
        st = r.st
        head = request_head(r.req.method, r.req.path, list(r.req.headers.items(multi=True)),
                            placeholder_header=st.route.header_name if st.route else None)
        texts = self._texts(r, head, body_texts, trailers)
        scanner = self.runtime.scanner
        if scanner is None:
            return decide.block(503, "scanner unavailable: no scanner configured", st.rule), "text"
        try:
            result = await incremental.scan_request(scanner, self.runtime.scan_cache, r.req.url, texts)
        except ScannerUnavailable as e:
            return decide.block(503, f"scanner unavailable: {e.reason}", st.rule), "text"
        st.scanned = "full" if body else "headers"  # for the log (replay needs it)
        if result.decision != "deny":
            return None
        st.findings = [rule for rule, _ in result.findings]
        st.request_line_flagged = await self._request_line_flagged(r, result)
        reason = "scanner found " + "; ".join(f"{rule}: {msg}" for rule, msg in result.findings)
        if r.policy.scanner.mode == "audit":
            st.would_block(st.rule, reason)
            return None
        return decide.block(403, reason, st.rule), "text"

    @staticmethod
    def _texts(r: _Request, head: str, body_texts: list[str], trailers: list[tuple[str, str]]) -> list[str]:
        """A large JSON body (a conversation re-sent every turn) is scanned as units, so what
        was found clean before is not scanned again (bottle.mitm.incremental)."""
        raw = body_texts[0] if body_texts else ""
        mime = r.req.headers.get("content-type", "").partition(";")[0].strip().lower()
        if len(raw) >= incremental.INCREMENTAL_BYTES and len(body_texts) > 1 and (
                mime == "application/json" or mime.endswith("+json")):
            units = incremental.split_json_body(head, raw)
            if units is not None:
                if trailers:
                    units.append(raw[-incremental.SEAM:] + "\r\n"
                                 + "\r\n".join(f"{name}: {value}" for name, value in trailers))
                return units
        return request_texts(head, body_texts, trailers)

    async def _request_line_flagged(self, r: _Request, result) -> bool:
        """Whether the secret is in the method or URL, which the log must then not show."""
        if result.url_denied:
            return True
        try:
            line = await self.runtime.scanner.scan_text(f"{r.req.method} {r.req.url}")
        except ScannerUnavailable:
            return True  # unknown: redact
        return line.decision == "deny"

    def _inject(self, r: _Request) -> None:
        """The last step: the real credential replaces the placeholder."""
        r.st.decided = True
        route = r.st.route
        if route is None:
            return
        name, value = credentials.credential_header(route, self.runtime.env)
        r.req.headers.pop(name, None)
        r.req.headers[name] = value
        # The answer is scrubbed of the credential on its way back, which needs a body
        # bottle can read: a compressed one is refused by the response filter.
        r.req.headers["accept-encoding"] = "identity"
        placeholder = r.policy.placeholders[route.token_ref]
        r.st.scrubber = credentials.Scrubber(credentials.credential_scrubs(route, placeholder, self.runtime.env))

    @staticmethod
    def _trailers(r: _Request) -> list[tuple[str, str]]:
        return list(r.req.trailers.items(multi=True)) if r.req.trailers else []

    def _request(self, flow: http.HTTPFlow) -> _Request:
        return _Request(flow=flow, st=FlowState.of(flow), policy=self.runtime.require_policy(),
                        host=normalize_host(flow.request.host))


def git_refusal_kind(path: str) -> str:
    request = git.classify(path)
    service = request.service if request else "git-upload-pack"
    if path.split("?", 1)[0].endswith("/info/refs"):
        return f"git-{service}-advertisement"
    if service == "git-receive-pack":
        return "text"  # a push refused on its URL: git shows the HTTP status
    return f"git-{service}-result"


def peer_ip(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return decide.normalize_client_ip(str(peer[0])) if peer else "unknown"
