"""The proxy's addons, in the order mitmproxy calls them for every hook.

0. TransparentDestination  a transparently captured connection goes to the host its TLS
                           SNI or Host header names, never to the address the agent dialled
1. RequestRecorder  notes for the log what the agent sent, before anything changes it
2. RequestPipeline  decides every request (the order of its steps is the security argument)
3. TlsPassthrough   leaves a `tls: passthrough` tunnel undecrypted (tls_clienthello only)
4. GitPushReport    replaces upstream's answer to a refused push with bottle's report
5. ResponseFilter   streams answers back, scrubbed of the real credential
6. ResponseScanner  scans text answers for prompt injection, after the scrubbing
7. WebSocketScanner scans the agent's websocket messages before they are forwarded
8. UpstreamGuard    refuses upstream connections the policy does not name
9. RequestLog       last, so it logs each flow's final decision

All share one Runtime (policy + scanner client), so a reload changes them together.
"""

from __future__ import annotations

from typing import Any

from bottle.mitm.answers import ResponseScanner
from bottle.mitm.passthrough import TlsPassthrough
from bottle.mitm.pipeline import RequestPipeline
from bottle.mitm.push import GitPushReport
from bottle.mitm.requestlog import RequestLog, RequestRecorder
from bottle.mitm.responses import ResponseFilter
from bottle.mitm.state import Runtime
from bottle.mitm.transparent import TransparentDestination
from bottle.mitm.upstream import UpstreamGuard
from bottle.mitm.websocket import WebSocketScanner


def make_addons(runtime: Runtime) -> list[Any]:
    return [
        TransparentDestination(runtime),
        RequestRecorder(runtime),
        RequestPipeline(runtime),
        TlsPassthrough(runtime),
        GitPushReport(),
        ResponseFilter(),
        ResponseScanner(runtime),
        WebSocketScanner(runtime),
        UpstreamGuard(runtime),
        RequestLog(runtime),
    ]
