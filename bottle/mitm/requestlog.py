"""One JSON line per request (and per refused or audited websocket message) on stdout;
the fields are documented in docs/log-format.md. Never a secret: see bottle.mitm.redact
for what of the agent's method, path, host and header names is redacted; header values
never appear, and credentials only as their token_ref."""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import Any

from mitmproxy import http

from bottle.mitm.logformat import log_line, logged_path, placeholder_locations
from bottle.mitm.pipeline import peer_ip
from bottle.mitm.redact import REDACTED, loggable_header_name, loggable_host, loggable_method
from bottle.mitm.state import FlowState, Runtime, fail_closed


def emit_stdout(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class RequestRecorder:
    """Runs before every other addon: notes what the log needs from the request as the
    agent sent it, before the pipeline injects the real credential."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        headers = list(flow.request.headers.items(multi=True))
        st.headers = sorted({loggable_header_name(name) for name, _ in headers})
        st.placeholders = placeholder_locations(self.runtime.require_policy(), flow.request.url, headers)


class RequestLog:
    """Runs after every other addon, when a flow's decision is final."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # a refused CONNECT gets no other hook
            self._log(flow)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        status = flow.response.status_code if flow.response else 502
        if flow.error and flow.error.msg.startswith("Request body exceeds"):
            # mitmproxy's body_size_limit (bottle.mitm.patches): it answered 413 and closed.
            limit = self.runtime.policy.scanner.max_body_bytes if self.runtime.policy else "?"
            st.decision, st.blocked, status = "block", True, 413
            st.reason = st.reason or f"request body exceeds the scan limit of {limit} bytes; connection closed"
        elif not st.reason and flow.error:
            st.reason = f"proxy error: {flow.error.msg}"
        self._log(flow, status=status)

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        entry, st.message_log = st.message_log, None
        if entry is None:
            return
        line = self._line(flow, entry["timestamp"], entry["status"])
        line.update(method="WS", bytes_up=entry["bytes_up"], bytes_down=0, decision=entry["decision"],
                    reason=entry["reason"], scanner=entry["findings"], answer_scanner=[], scrubbed=0)
        self._emit(line)

    def _log(self, flow: http.HTTPFlow, status: int | None = None) -> None:
        st = FlowState.of(flow)
        if st.logged:
            return
        st.logged = True
        if status is None:
            status = flow.response.status_code if flow.response else 0
        if st.blocked and flow.response is not None:
            st.bytes_down = len(flow.response.raw_content or b"")
        self._emit(self._line(flow, flow.request.timestamp_start or time.time(), status))

    def _emit(self, line: dict[str, Any]) -> None:
        (self.runtime.emit or emit_stdout)(line)

    def _line(self, flow: http.HTTPFlow, started: float, status: int) -> dict[str, Any]:
        st = FlowState.of(flow)
        req = flow.request
        policy = self.runtime.policy
        if st.request_line_flagged:  # the scanner found a secret in the method or URL itself
            method, path = REDACTED, "/" + REDACTED
        else:
            method, path = loggable_method(req.method), logged_path(req.path)
        return log_line(
            time=rfc3339(started),
            bottle=policy.bottle if policy else None,
            client=peer_ip(flow),
            method=method,
            scheme=req.scheme,
            host=loggable_host(req.host if st.logged_host is None else st.logged_host),
            port=req.port,
            path=path if req.method != "CONNECT" else "",
            status=status,
            bytes_up=st.bytes_up,
            bytes_down=st.bytes_down,
            duration_ms=max(0, round((time.time() - started) * 1000)),
            decision=st.decision,
            rule=st.rule,
            reason=st.reason,
            scanner=st.findings,
            answer_scanner=st.answer_findings,
            token_ref=st.token_ref,
            scrubbed=st.scrubbed,
            headers=st.headers,
            placeholders=st.placeholders,
            scan=st.scanned,
        )


def rfc3339(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
