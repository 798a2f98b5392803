"""Where bottle changes how mitmproxy 12.2.3 behaves, and why. Each change is small,
wraps mitmproxy's own method instead of copying it, and is tested against the pinned
version (requirements/egress-proxy.txt); `install()` is called once by the launcher.

1. **A hook before a streamed request ends.** mitmproxy calls a stream function for each
   chunk (synchronously) and fires `request` only after the last chunk has gone. A push is
   scanned while it streams; the verdict must be known before its final bytes go, or the
   server could act on a complete pack. `bottle_request_streamed` fires, and is awaited,
   before mitmproxy hands the stream function its final `b""`; a flow killed there never
   sends its end.
2. **Bounded buffering.** A request whose body bottle scans is buffered whole before the
   `request` hook (and, with `scanner.responses: block`, a text answer before `response`);
   mitmproxy would buffer any size (a refused 600 MiB upload is read to the end). Its own
   `body_size_limit` stops buffering and closes the connection, but it would also refuse
   bodies bottle streams (uploads, git pushes, downloads) before any addon could decide.
   Applied only to bodies being buffered, it bounds exactly what bottle holds.
3. **WebSocket control frames.** mitmproxy relays ping and pong payloads and close
   reasons without a hook, so neither the scanner nor the credential scrubber sees them.
   Payloads longer than a short heartbeat token are emptied, in both directions: up to 125
   bytes could otherwise carry a secret out or a reflected credential in.
4. **The original port of a captured connection** (transparent capture,
   docs/prds/0009-transparent-capture.md). mitmproxy's transparent mode asks the platform for
   a connection's original destination (SO_ORIGINAL_DST), which the proxy's kernel does not
   have: the rewrite happened in the agent's namespace. Here it is the listener's own address
   with the port the agent dialled, told by the listener (`install_original_port`, called by
   the launcher with the policy's lookup); the address itself is never used as a destination
   (bottle.mitm.transparent).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable

import wsproto.events
from mitmproxy import http
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import websocket
from mitmproxy.proxy.layers.http import HttpStream, RequestEndOfMessage

# Heartbeat payloads (random ids, timestamps) are at most this long; nothing shorter
# can hold a credential or a recognisable secret.
MAX_CONTROL_PAYLOAD = 8

_installed = False


@dataclasses.dataclass
class RequestStreamedHook(commands.StartHook):
    """A streamed request's body has arrived; its last bytes and its end have not been sent.
    Kill the flow to keep them from the server."""

    name = "bottle_request_streamed"
    flow: http.HTTPFlow


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    _hook_before_streamed_end()
    _bound_buffered_request_bodies()
    _empty_control_frame_payloads()


def _hook_before_streamed_end() -> None:
    original = HttpStream.state_stream_request_body

    def state_stream_request_body(self, event):
        if isinstance(event, RequestEndOfMessage):
            yield RequestStreamedHook(self.flow)
            if (yield from self.check_killed(True)):
                return
        yield from original(self, event)

    HttpStream.state_stream_request_body = state_stream_request_body


def _bound_buffered_request_bodies() -> None:
    original = HttpStream.check_body_size

    def check_body_size(self, request: bool):
        # Only while a body is being buffered (mitmproxy's "late" check), never before the
        # addons decided whether to stream it: bottle buffers only what it must scan whole.
        if (self.request_body_buf if request else self.response_body_buf):
            return (yield from original(self, request))
        return False

    HttpStream.check_body_size = check_body_size


def _empty_control_frame_payloads() -> None:
    original = websocket.WebsocketConnection.send2

    def send2(self, event: wsproto.events.Event) -> commands.SendData:
        if isinstance(event, (wsproto.events.Ping, wsproto.events.Pong)) and len(event.payload) > MAX_CONTROL_PAYLOAD:
            event = type(event)(payload=b"")
        elif isinstance(event, wsproto.events.CloseConnection) and event.reason:
            event = wsproto.events.CloseConnection(code=event.code, reason="")
        return original(self, event)

    websocket.WebsocketConnection.send2 = send2


def install_original_port(original_port: Callable[[int], int | None]) -> None:
    """A listener the policy does not name fails the lookup, and mitmproxy then closes the
    connection."""
    from mitmproxy import platform

    def original_addr(sock: socket.socket) -> tuple[str, int]:
        host, listen = sock.getsockname()[:2]
        port = original_port(listen)
        if port is None:
            raise OSError(f"bottle: no captured port is redirected to listener {listen}")
        return host, port

    platform.original_addr = original_addr
