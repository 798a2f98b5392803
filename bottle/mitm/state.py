"""What every addon shares: the live policy (`Runtime`), one typed state per flow
(`FlowState`), how a flow is refused, and the fail-closed wrapper every hook goes through."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mitmproxy import http

from bottle.mitm import git
from bottle.mitm.credentials import Scrubber
from bottle.mitm.decide import Verdict
from bottle.mitm.policy import Policy, Route

_META = "bottle"


@dataclasses.dataclass
class Runtime:
    """The policy and scanner client every addon enforces; a reload swaps both at once."""

    policy: Policy | None = None
    scanner: Any = None
    env: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    emit: Callable[[dict[str, Any]], None] | None = None
    scan_cache: Any = None  # bottle.mitm.incremental.CleanCache for this scanner configuration

    def require_policy(self) -> Policy:
        if self.policy is None:
            raise RuntimeError("no policy loaded")
        return self.policy

    def replace(self, policy: Policy, scanner: Any) -> None:
        """Swap policy and scanner; texts found clean stay clean only under the same scanner
        configuration."""
        from bottle.mitm.incremental import CleanCache

        if self.scan_cache is None or self.policy is None or policy.scanner != self.policy.scanner:
            self.scan_cache = CleanCache(repr(policy.scanner.__dict__))
        self.policy, self.scanner = policy, scanner


@dataclasses.dataclass
class FlowState:
    """Everything bottle knows about one flow, from its first hook to its log line."""

    decision: str = "allow"  # allow | would_block | block
    rule: str | None = None
    reason: str = ""
    findings: list[str] = dataclasses.field(default_factory=list)
    route: Route | None = None
    token_ref: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    decided: bool = False  # nothing is left to check before the request goes upstream
    blocked: bool = False
    scan_body: bool = True  # whether binary websocket messages must be refused
    scrubber: Scrubber | None = None  # the real credential to take out of the answer
    scrubbed: int = 0
    push: git.PushInspector | None = None
    push_scan: Any = None  # bottle.mitm.pushscan.PushScan: what the push adds, scanned as it streams
    refused_response: tuple[int, str, str | None] | None = None
    message_log: dict[str, Any] | None = None  # the verdict on the newest websocket message
    answer_scan: Any = None  # bottle.mitm.answers.AnswerScan of a text answer
    answer_findings: list[str] = dataclasses.field(default_factory=list)
    logged_host: str | None = None  # the host a misdirected request named, when it differs
    request_line_flagged: bool = False  # the scanner found a secret in the method or URL
    logged: bool = False
    # What the log records for `bottle policy replay` (docs/log-format.md): the request's
    # header names and where it carried each placeholder, as the agent sent it (before the
    # credential is injected), and what the scanner saw of it.
    headers: list[str] = dataclasses.field(default_factory=list)
    placeholders: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    scanned: str = "none"  # none | headers | full

    @classmethod
    def of(cls, flow: http.HTTPFlow) -> FlowState:
        state = flow.metadata.get(_META)
        if state is None:
            state = flow.metadata[_META] = cls()
        return state

    def would_block(self, rule_id: str | None, reason: str) -> None:
        if self.decision != "would_block":
            self.decision, self.rule, self.reason = "would_block", rule_id or self.rule, reason


def refusal_response(status: int, reason: str, rule_id: str | None, kind: str = "text") -> http.Response:
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


def refuse(flow: http.HTTPFlow, verdict: Verdict, kind: str = "text") -> None:
    """Answer the request with bottle's refusal; nothing of it goes upstream."""
    st = FlowState.of(flow)
    st.decision, st.reason, st.blocked, st.decided = "block", verdict.reason, True, True
    st.rule = verdict.rule_id or st.rule
    flow.request.stream = False
    flow.response = refusal_response(verdict.status, verdict.reason, st.rule, kind)


_REQUEST_HOOKS = ("http_connect", "requestheaders", "request")  # nothing has gone upstream yet


def fail_closed(hook: Callable[[Any, Any], Awaitable[None] | None]) -> Callable[[Any, Any], Awaitable[None]]:
    """Every hook of every bottle addon goes through this: an exception blocks the flow.

    mitmproxy itself logs an addon's exception and lets the flow continue, which would
    let an unchecked request through. Before the request is sent, the agent gets a 500
    refusal; afterwards the flow is killed (and a websocket message dropped); an upstream
    connection is refused.
    """

    @functools.wraps(hook)
    async def wrapper(self: Any, subject: Any) -> None:
        try:
            result = hook(self, subject)
            if result is not None:
                await result
        except Exception as e:
            where = f"{type(self).__name__}.{hook.__name__}"
            print(f"bottle: {where} failed, blocking: {traceback.format_exc()}", file=sys.stderr, flush=True)
            _refuse_after_error(subject, hook.__name__, f"internal error in bottle's {hook.__name__} check "
                                f"({type(e).__name__})")

    wrapper.fail_closed = True  # type: ignore[attr-defined]
    return wrapper


def _refuse_after_error(subject: Any, hook: str, reason: str) -> None:
    """Refuse without relying on anything that may have failed (the flow's state included)."""
    if hasattr(subject, "ignore_connection"):  # tls_clienthello: decrypt, so the pipeline decides
        subject.ignore_connection = False
        return
    if not isinstance(subject, http.HTTPFlow):  # server_connect's ServerConnectionHookData
        subject.server.error = f"bottle: {reason}"
        return
    flow = subject
    before_upstream = hook in _REQUEST_HOOKS
    if before_upstream:
        flow.request.stream = False
        flow.response = refusal_response(500, reason, None)
    elif hook == "websocket_message" and flow.websocket is not None and flow.websocket.messages:
        flow.websocket.messages[-1].drop()
    try:
        st = FlowState.of(flow)
        st.decision, st.reason, st.blocked, st.decided = "block", reason, True, True
    except Exception:
        print(f"bottle: could not record the refusal: {traceback.format_exc()}", file=sys.stderr, flush=True)
    if not before_upstream and flow.killable:
        flow.kill()
