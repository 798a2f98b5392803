"""One JSON line per request (and per refused or audited websocket message) on stdout;
the fields are documented in docs/log-format.md. Never a secret: query values are
redacted, headers appear by name only, and credentials only as their token_ref."""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import Any

from mitmproxy import http

from bottle.mitm import credentials
from bottle.mitm.decide import redact_query
from bottle.mitm.pipeline import peer_ip
from bottle.mitm.policy import Policy
from bottle.mitm.state import FlowState, Runtime, fail_closed

# Version of the request line's fields; readers refuse lines newer than they know.
# 2 added log_format, headers, placeholders and scan.
LOG_FORMAT = 2
# Query values are redacted, except git's own service names: replay needs them to tell a
# clone from a push, and they are one of two fixed words, never the agent's data.
_GIT_SERVICES = ("service=git-upload-pack", "service=git-receive-pack")


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
        st.headers = sorted({name.lower() for name, _ in headers})
        st.placeholders = placeholder_locations(self.runtime.require_policy(), flow.request.url, headers)


def placeholder_locations(policy: Policy, url: str, headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """token_ref → where the request carried its placeholder: `url`, a header's name when
    the header's value is the credential itself, `<name>:partial` when it is inside more."""
    found: dict[str, list[str]] = {}
    for ref, placeholder in sorted(policy.placeholders.items()):
        where = ["url"] if placeholder in url else []
        for name, value in headers:
            # The same test the credential check applies to a route's own header.
            if credentials._carries_placeholder(value, placeholder):
                where.append(name.lower())
            elif placeholder in value:
                where.append(f"{name.lower()}:partial")
        if where:
            found[ref] = sorted(set(where))
    return found


def logged_path(path: str) -> str:
    shown = redact_query(path)
    for service in _GIT_SERVICES:
        if service in path.split("?", 1)[-1].split("&"):
            shown = shown.replace("service=REDACTED", service, 1)
    return shown


def log_line(**fields: Any) -> dict[str, Any]:
    """A request line with every key, in the documented order."""
    line = {"log_format": LOG_FORMAT, "time": None, "bottle": None, "client": None, "method": None, "scheme": None,
            "host": None, "port": None, "path": "", "status": 0, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0,
            "decision": "allow", "rule": None, "reason": "", "scanner": [], "token_ref": None, "scrubbed": 0,
            "headers": [], "placeholders": {}, "scan": "none"}
    unknown = set(fields) - set(line)
    if unknown:
        raise KeyError(f"not a log field: {', '.join(sorted(unknown))}")
    line.update(fields)
    return line


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
        if not st.reason and flow.error:
            st.reason = f"proxy error: {flow.error.msg}"
        self._log(flow, status=flow.response.status_code if flow.response else 502)

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        entry, st.message_log = st.message_log, None
        if entry is None:
            return
        line = self._line(flow, entry["timestamp"], entry["status"])
        line.update(method="WS", bytes_up=entry["bytes_up"], bytes_down=0, decision=entry["decision"],
                    reason=entry["reason"], scanner=entry["findings"], scrubbed=0)
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
        return log_line(
            time=_rfc3339(started),
            bottle=policy.bottle if policy else None,
            client=peer_ip(flow),
            method=req.method,
            scheme=req.scheme,
            host=req.host,
            port=req.port,
            path=logged_path(req.path) if req.method != "CONNECT" else "",
            status=status,
            bytes_up=st.bytes_up,
            bytes_down=st.bytes_down,
            duration_ms=max(0, round((time.time() - started) * 1000)),
            decision=st.decision,
            rule=st.rule,
            reason=st.reason,
            scanner=st.findings,
            token_ref=st.token_ref,
            scrubbed=st.scrubbed,
            headers=st.headers,
            placeholders=st.placeholders,
            scan=st.scanned,
        )


def _rfc3339(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
