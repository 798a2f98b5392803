"""Git pushes stream through a PushInspector: nothing reaches upstream until it is allowed.

The pack is scanned as it streams (bottle.mitm.pushscan); its last bytes are held until
`bottle_request_streamed`, which mitmproxy awaits after the body has arrived and before
its end goes upstream (bottle.mitm.patches): there the scan's verdict is awaited.
mitmproxy sends the request head upstream when streaming starts, so a refused push still
sends upstream a head and an empty or unfinished body, which git answers without changing
anything; `GitPushReport` replaces that answer with bottle's per-ref report, which git
prints for each refused ref (docs/prds/0004-git-push-policy.md).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from bottle.mitm import decide, git
from bottle.mitm.policy import Policy
from bottle.mitm.pushscan import PushScan
from bottle.mitm.state import FlowState, fail_closed


def check_encoding(req: http.Request, rule_id: str | None) -> tuple[decide.Verdict, str] | None:
    encoding = req.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return decide.block(415, f"git push with content-encoding {encoding} is not supported", rule_id), "text"
    return None


def start(flow: http.HTTPFlow, st: FlowState, policy: Policy, scanner: Any) -> None:
    """Stream the push body through an inspector; called once every other step passed."""
    assert policy.git is not None
    req = flow.request
    st.push_scan = PushScan(scanner, audit=policy.scanner.mode == "audit")
    st.push = git.PushInspector(policy.git, sink=st.push_scan.text)
    # The body's length is unknown until the decision (a refused push sends an empty
    # body), so an HTTP/1 upstream gets it chunked; mitmproxy strips the header when
    # it converts an HTTP/1 request for an HTTP/2 upstream.
    req.headers.pop("content-length", None)
    if not (req.is_http2 and flow.server_conn.alpn == b"h2"):
        req.headers["transfer-encoding"] = "chunked"
    req.stream = _stream(st, st.push, st.push_scan)


def _stream(st: FlowState, inspector: git.PushInspector, scan: PushScan) -> Callable[[bytes], list[bytes]]:
    # Called synchronously on the event loop for each chunk, then with b"" at the end;
    # returns a list, never b"": mitmproxy sends each returned chunk, and an empty chunk
    # in a chunked body is its terminator.
    def stream(chunk: bytes) -> list[bytes]:
        st.bytes_up += len(chunk)
        try:
            if chunk:
                inspector.feed(chunk)
                scan.flush()
                if scan.refused:
                    inspector.halt()
            else:
                if not scan.settled:
                    inspector.refuse_all("git.push", "bottle: internal error: the push ended before its scan did")
                inspector.finish()
        except Exception as e:
            print(f"bottle: push inspection failed, refusing: {traceback.format_exc()}", file=sys.stderr, flush=True)
            inspector.refuse_all("git.push", f"bottle: internal error reading the push ({type(e).__name__})")
        out = inspector.take(final=not chunk)
        return [out] if out else []

    return stream


async def settle(st: FlowState) -> None:
    """The body has arrived: the policy's verdict, then the scan's, before anything else goes."""
    inspector, scan = st.push, st.push_scan
    await scan.wait()
    inspector.finish()
    if not inspector.refusals and scan.error is None and scan.findings:
        st.findings = scan.rule_ids
    if not inspector.refusals and (scan.error is not None or scan.findings):
        refs = [(u.ref, u.new) for u in inspector.commands.updates]
        reasons = await scan.reasons(refs, inspector.walker)
        rule_id = "git.push" if scan.error is not None else st.rule or "git.push"
        if scan.refused:
            inspector.refuse({ref: (rule_id, reason) for ref, reason in reasons.items()})
        else:
            st.would_block(rule_id, next(iter(reasons.values())))
    scan.settled = True


class GitPushReport:
    """Awaits a push's scan before its end goes upstream; replaces upstream's answer to a
    refused push with bottle's receive-pack report."""

    @fail_closed
    async def bottle_request_streamed(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if st.push is not None and st.push_scan is not None:
            await settle(st)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if st.push is not None and st.push.refusals:
            st.blocked = True  # the answer is replaced in `response`; nothing else touches it

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if st.push is None or not st.push.refusals:
            return
        rule_id, reason = st.push.first_refusal
        st.decision, st.rule, st.reason, st.blocked, st.scrubber = "block", rule_id, reason, True, None
        flow.response = http.Response.make(200, st.push.report(), {
            "content-type": "application/x-git-receive-pack-result", "cache-control": "no-cache",
            "x-bottle-decision": "block", "x-bottle-rule": rule_id,
        })
