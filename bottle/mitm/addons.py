"""The proxy's addons, in the order mitmproxy calls them for every hook.

0. RequestRecorder  notes for the log what the agent sent, before anything changes it
1. RequestPipeline  decides every request (the order of its steps is the security argument)
2. GitPushReport    replaces upstream's answer to a refused push with bottle's report
3. ResponseFilter   streams answers back, scrubbed of the real credential
4. WebSocketScanner scans the agent's websocket messages before they are forwarded
5. UpstreamGuard    refuses upstream connections the policy does not name
6. RequestLog       last, so it logs each flow's final decision

All share one Runtime (policy + scanner client), so a reload changes them together.
"""

from __future__ import annotations

from typing import Any

from bottle.mitm.pipeline import RequestPipeline
from bottle.mitm.push import GitPushReport
from bottle.mitm.requestlog import RequestLog, RequestRecorder
from bottle.mitm.responses import ResponseFilter
from bottle.mitm.state import Runtime
from bottle.mitm.upstream import UpstreamGuard
from bottle.mitm.websocket import WebSocketScanner


def make_addons(runtime: Runtime) -> list[Any]:
    return [
        RequestRecorder(runtime),
        RequestPipeline(runtime),
        GitPushReport(),
        ResponseFilter(),
        WebSocketScanner(runtime),
        UpstreamGuard(runtime),
        RequestLog(runtime),
    ]
