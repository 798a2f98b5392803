"""Transparent capture (docs/prds/0009-transparent-capture.md): connections the agent did not
address to the proxy arrive at its transparent listeners, sent there by the rules a helper
installed in the agent's network namespace.

The proxy never connects to the address the agent dialled. A connection goes to the host
its TLS SNI names, or, for plain HTTP, its Host header; from there on each request takes
the same pipeline as a proxied one, where SNI and Host are checked against each other, the
target must be origin-form, and the host must be allowed.

Which port the agent dialled is told by which listener accepted the connection: the
rewrite happened in the agent's namespace, so the proxy's kernel has no original
destination to look up (bottle.mitm.patches, 4).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from bottle.mitm import decide
from bottle.mitm.state import FlowState, Runtime, fail_closed, refuse


def is_transparent(client: Any) -> bool:
    """Whether a client connection arrived at a transparent listener."""
    return isinstance(getattr(client, "proxy_mode", None), mode_specs.TransparentMode)


class TransparentDestination:
    """Runs first: names the destination of a captured connection, or refuses it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def tls_clienthello(self, data: Any) -> None:
        """The SNI becomes the server address before anything else (TLS passthrough included)
        looks at it. Without SNI the address stays the proxy's own, which no rule allows,
        and the request is refused below."""
        context = data.context
        if not self._captured(context.client) or not data.client_hello.sni:
            return
        _, port = context.server.address
        context.server.address = (decide.normalize_host(data.client_hello.sni), port)

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self._captured(flow.client_conn) or flow.response is not None:
            return
        verdict, host = decide.transparent_destination(flow.client_conn.tls, flow.client_conn.sni,
                                                       flow.request.host_header)
        if host is None:
            # The log names what the request meant, when it said it; never the proxy's own address.
            FlowState.of(flow).logged_host = decide.authority_host(flow.request.host_header or "") or ""
            refuse(flow, verdict)
            return
        # Not `request.host = …`: that would rewrite the Host header, which the fronting
        # check must see as the agent sent it.
        flow.request.data.host = host

    def _captured(self, client: Any) -> bool:
        return self.runtime.require_policy().transparent is not None and is_transparent(client)

