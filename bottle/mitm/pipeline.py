"""The request pipeline: the one addon whose order is the security argument.

Every request passes these steps top-down, and the first refusal ends it:

    client      the connection comes from this bottle's agent
    fronting    CONNECT target, TLS SNI and Host name the same host
    allow       a rule allows host, port, method and path (discover: logged, passed)
    credentials placeholders stay on their routes; the real credential is available
    git/GitHub  repository allowlist and push policy; GitHub API refusals
    body        bounded, decoded and unpacked into the strings pipelock will see
    scan        pipelock's verdict on URL, headers and body (audit: logged, passed)
    inject      only now is the placeholder replaced with the real credential

Headers-stage steps run in `requestheaders`, body-stage steps in `request`; a body that
streams (git pushes, `scan_body: false`) is decided entirely in `requestheaders`, because
streamed bytes leave before `request` runs. The decisions themselves are pure functions
in decide, credentials, git, github and bodies; this module turns flows into their
arguments and their verdicts into answers.
"""

from __future__ import annotations

import dataclasses

from mitmproxy import http

from bottle.mitm import credentials, decide, git, github, push
from bottle.mitm.bodies import UnscannableBody, decode_content, unpack_body
from bottle.mitm.policy import AllowRule, Policy, normalize_host
from bottle.mitm.scanner import ScannerUnavailable, scan_request
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
        for step in (self._client, self._fronting, self._allow, self._credentials, self._git, self._github_api):
            if (refusal := step(r)) is not None:
                return refuse(flow, *refusal)
        await self._headers_decide_body(r)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if flow.response is not None or st.decided:
            return
        r = self._request(flow)
        body = r.req.raw_content or b""
        st.bytes_up = len(body)
        if (refusal := self._github_graphql(r, body)) is not None:
            return refuse(flow, *refusal)
        try:
            strings = unpack_body(body, r.req.headers.get("content-type"), r.req.headers.get("content-encoding"),
                                  r.policy.scanner.max_body_bytes)
        except UnscannableBody as e:
            return refuse(flow, decide.block(e.status, e.reason, st.rule), "text")
        if (refusal := await self._scan(r, strings)) is not None:
            return refuse(flow, *refusal)
        self._inject(r)

    # -- headers-stage steps: each returns a refusal or None ------------------------------

    def _client(self, r: _Request) -> Refusal | None:
        return self._judge(r, decide.check_client(r.policy, peer_ip(r.flow)))

    def _fronting(self, r: _Request) -> Refusal | None:
        return self._judge(r, decide.check_fronting(r.req.host, r.flow.client_conn.sni, r.req.host_header))

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
        if (refusal := github.check(r.policy.github_deny, r.req.method, r.req.path, None)) is not None:
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
        """A body that streams is decided now; any other waits for `request` (bounded)."""
        r.st.scan_body = r.rule is None or r.rule.scan_body  # for the messages of a websocket
        if git.check_request(r.policy.git, r.host, r.req.path) is not None and git.is_push(r.req.method, r.req.path):
            refusal = push.check_encoding(r.req, r.st.rule)
            if refusal is None:
                refusal = await self._scan(r, [], body=False)
            if refusal is not None:
                return refuse(r.flow, *refusal)
            self._inject(r)
            return push.start(r.flow, r.st, r.policy)
        if not r.st.scan_body and not r.is_graphql:
            if (refusal := await self._scan(r, [], body=False)) is not None:
                return refuse(r.flow, *refusal)
            self._inject(r)
            r.req.stream = _count_up(r.st)
            return
        length = r.req.headers.get("content-length", "")
        limit = r.policy.scanner.max_body_bytes
        if length.isdigit() and int(length) > limit:
            refuse(r.flow, decide.block(413, f"request body of {int(length)} bytes exceeds the scan limit of "
                                             f"{limit}", r.st.rule))

    # -- body-stage steps -----------------------------------------------------------------

    def _github_graphql(self, r: _Request, body: bytes) -> Refusal | None:
        if not r.is_graphql:
            return None
        try:
            plain = decode_content(body, r.req.headers.get("content-encoding"), r.policy.scanner.max_body_bytes)
        except UnscannableBody as e:
            return decide.block(e.status, e.reason, r.st.rule), "json"
        if (refusal := github.check(r.policy.github_deny, r.req.method, r.req.path, plain)) is not None:
            return decide.block(403, refusal.reason, refusal.rule_id), "json"
        return None

    async def _scan(self, r: _Request, body_strings: list[str], *, body: bool = True) -> Refusal | None:
        """pipelock's verdict on URL + header values + body strings; an error blocks."""
        st = r.st
        skip = st.route.header_name if st.route else None
        header_values = [v for k, v in r.req.headers.items(multi=True) if k.lower() != skip]
        text = "\n".join(header_values + body_strings)
        scanner = self.runtime.scanner
        if scanner is None:
            return decide.block(503, "scanner unavailable: no scanner configured", st.rule), "text"
        try:
            result = await scan_request(scanner, r.req.url, text)
        except ScannerUnavailable as e:
            return decide.block(503, f"scanner unavailable: {e.reason}", st.rule), "text"
        st.scanned = "full" if body else "headers"  # for the log (replay needs it)
        if result.decision != "deny":
            return None
        st.findings = [rule for rule, _ in result.findings]
        reason = "scanner found " + "; ".join(f"{rule}: {msg}" for rule, msg in result.findings)
        if r.policy.scanner.mode == "audit":
            st.would_block(st.rule, reason)
            return None
        return decide.block(403, reason, st.rule), "text"

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

    def _request(self, flow: http.HTTPFlow) -> _Request:
        return _Request(flow=flow, st=FlowState.of(flow), policy=self.runtime.require_policy(),
                        host=normalize_host(flow.request.host))


def _count_up(st: FlowState):
    def count(chunk: bytes) -> bytes:
        st.bytes_up += len(chunk)
        return chunk

    return count


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
