"""TLS passthrough (`egress.allow[].tls: passthrough`) for clients that pin certificates or
authenticate with their own (mutual TLS): the tunnel is forwarded without decryption.

Only the connection is checked, because only the connection is seen: the CONNECT target
and port were checked against the rules when the tunnel was asked for (the pipeline's
`http_connect`; for a transparently captured connection, whose host is its SNI, here), and
here the TLS SNI must name the same host. A ClientHello without SNI or
naming another host is decrypted instead, and then refused by the pipeline like any request
on a passthrough rule (which allows no decrypted request) or as domain fronting. The
upstream connection still goes through UpstreamGuard and the resolver guard.
"""

from __future__ import annotations

import time
from typing import Any

from bottle.mitm import decide
from bottle.mitm.logformat import log_line
from bottle.mitm.policy import normalize_host
from bottle.mitm.requestlog import emit_stdout, rfc3339
from bottle.mitm.state import Runtime, fail_closed


class TlsPassthrough:
    """Decides, per TLS ClientHello, whether a tunnel is left undecrypted; logs each one."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def tls_clienthello(self, data: Any) -> None:
        address = data.context.server.address
        if address is None:
            return
        host, port = address
        policy = self.runtime.require_policy()
        rule = decide.passthrough_rule(policy, host, port)
        sni = data.client_hello.sni
        if rule is None or not sni or normalize_host(sni) != normalize_host(host):
            return
        # A transparently captured connection asked no CONNECT, so nothing has checked its
        # host yet (under a wildcard: its labels); for a CONNECT this repeats that check.
        connect = decide.check_connect(policy, host, port)
        if not connect.allowed or connect.would_block:
            return
        peer = data.context.client.peername
        client = decide.normalize_client_ip(str(peer[0])) if peer else "unknown"
        if not decide.check_client(policy, client).allowed:
            return
        data.ignore_connection = True
        (self.runtime.emit or emit_stdout)(log_line(
            time=rfc3339(time.time()), bottle=policy.bottle, client=client, method="CONNECT", scheme="https",
            host=host, port=port, status=200, decision="allow", rule=rule.id, scan="none",
        ))
