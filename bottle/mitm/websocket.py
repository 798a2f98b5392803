"""WebSocket messages from the agent are scanned before mitmproxy forwards them."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.websocket import WebSocketMessage

from bottle.mitm import decide
from bottle.mitm.scanner import ScannerUnavailable
from bottle.mitm.state import FlowState, Runtime, fail_closed


class WebSocketScanner:
    """Scan each client message before it is forwarded; server messages pass, with the
    real credential of a credentialed upgrade replaced by the agent's placeholder.

    mitmproxy assembles a whole message (all its frames) in memory before this hook, and
    holds it, and everything after it on this websocket, until the hook returns. Only the
    scan limit bounds what is sent to the scanner, not what mitmproxy buffers. The verdict
    on a refused or audited message is left in `FlowState.message_log` for the log.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        st = FlowState.of(flow)
        st.message_log = None
        message = flow.websocket.messages[-1]
        # mitmproxy keeps every message of a live websocket; keep only the newest.
        del flow.websocket.messages[:-1]
        if message.from_client:
            await self._check(flow, st, message)
        elif st.scrubber is not None:
            message.content = st.scrubber.replace(message.content)
            st.scrubbed = st.scrubber.count

    async def _check(self, flow: http.HTTPFlow, st: FlowState, message: WebSocketMessage) -> None:
        policy = self.runtime.require_policy()
        limit = policy.scanner.max_body_bytes
        if not message.is_text:
            if not st.scan_body:
                return
            return _drop(st, message, decide.block(415, "binary websocket message cannot be scanned"))
        if len(message.content) > limit:
            return _drop(st, message, decide.block(
                413, f"websocket message of {len(message.content)} bytes exceeds the scan limit of {limit}"))
        scanner = self.runtime.scanner
        if scanner is None:
            return _drop(st, message, decide.block(503, "scanner unavailable: no scanner configured"))
        try:
            result = await scanner.scan_text(message.content.decode("utf-8", "replace"))
        except ScannerUnavailable as e:
            return _drop(st, message, decide.block(503, f"scanner unavailable: {e.reason}"))
        if result.decision != "deny":
            return
        findings = [rule for rule, _ in result.findings]
        reason = "scanner found " + "; ".join(f"{rule}: {msg}" for rule, msg in result.findings)
        if policy.scanner.mode == "audit":
            st.message_log = _entry(message, 101, "would_block", reason, findings)
            return
        _drop(st, message, decide.block(403, reason), findings)


def _drop(st: FlowState, message: WebSocketMessage, verdict: decide.Verdict, findings: list[str] | None = None) -> None:
    message.drop()
    st.message_log = _entry(message, verdict.status, "block", verdict.reason, findings or [])


def _entry(message: WebSocketMessage, status: int, decision: str, reason: str, findings: list[str]) -> dict:
    return {"timestamp": message.timestamp, "status": status, "bytes_up": len(message.content),
            "decision": decision, "reason": reason, "findings": findings}
