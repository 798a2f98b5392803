"""The upstream-address guard, in one place: which addresses the proxy may connect to.

Two layers, both fed by the live policy:
- `GuardedEventLoop` filters every name resolution mitmproxy makes (it connects with
  asyncio.open_connection, which resolves through loop.getaddrinfo). Filtering there pins
  the checked addresses without a DNS-rebinding window and keeps mitmproxy's upstream
  connection reuse.
- `UpstreamGuard.server_connect` refuses a connection to a host no rule names, and an IP
  literal the rule does not permit, before any resolution.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from bottle.mitm import decide
from bottle.mitm.policy import Policy, is_ip_literal, normalize_host
from bottle.mitm.state import Runtime, fail_closed


class UpstreamRefused(OSError):
    pass


def filter_addresses(policy: Policy, host: str, port: Any, infos: list) -> list:
    """Keep only the resolved addresses bottle may connect to for this host."""
    if (normalize_host(host), _port(port)) == decide.scanner_target(policy):
        return infos
    allowance = decide.upstream_allowance(policy, host, _port(port))
    if allowance is None:
        raise UpstreamRefused(f"bottle: {host} is not an allowed upstream")
    kept = [info for info in infos if decide.is_permitted_upstream_ip(str(info[4][0]), allowance)]
    if not kept:
        shown = ", ".join(sorted({str(i[4][0]) for i in infos}))
        raise UpstreamRefused(f"bottle: {host} resolves only to refused addresses ({shown})")
    return kept


def _port(port: Any) -> int | None:
    try:
        return int(port)
    except (TypeError, ValueError):
        return None


class GuardedEventLoop(asyncio.SelectorEventLoop):
    """Filters every outgoing name resolution through the runtime's policy."""

    runtime: Runtime | None = None

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        infos = await super().getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
        if flags & socket.AI_PASSIVE or host is None:  # binding our own listeners
            return infos
        policy = self.runtime.policy if self.runtime is not None else None
        if policy is None:
            raise UpstreamRefused(f"bottle: no policy loaded yet, refusing to resolve {host!r}")
        name = host.decode() if isinstance(host, bytes) else str(host)
        return filter_addresses(policy, name, port, infos)


class UpstreamGuard:
    """Refuses upstream connections the policy does not name, before they are attempted."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def server_connect(self, data: Any) -> None:
        host, port = data.server.address
        policy = self.runtime.require_policy()
        if (normalize_host(host), port) == decide.scanner_target(policy):
            return
        allowance = decide.upstream_allowance(policy, host, port)
        if allowance is None:
            data.server.error = f"bottle: {host} is not an allowed upstream"
        elif is_ip_literal(host) and not decide.is_permitted_upstream_ip(host, allowance):
            data.server.error = f"bottle: upstream address {host} is not allowed"
