"""A deny-all DNS responder: every query gets NXDOMAIN at once, so stray lookups in the
agent container fail in milliseconds instead of timing out. One JSON log line per query."""

from __future__ import annotations

import asyncio
import datetime
import json
import struct
import sys
from collections.abc import Callable
from typing import Any

REASON = "dns is disabled in the bottle"
_NXDOMAIN = 3
_FORMERR = 1


class MalformedQuery(ValueError):
    pass


def parse_question(packet: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, qname, qtype, end offset of the first question)."""
    if len(packet) < 12:
        raise MalformedQuery("short header")
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000:
        raise MalformedQuery("not a query")
    if qdcount != 1:
        raise MalformedQuery("expected exactly one question")
    labels = []
    pos = 12
    while True:
        if pos >= len(packet):
            raise MalformedQuery("truncated name")
        length = packet[pos]
        if length & 0xC0:
            raise MalformedQuery("compressed name in question")
        pos += 1
        if length == 0:
            break
        labels.append(packet[pos : pos + length].decode("ascii", "replace"))
        pos += length
    if pos + 4 > len(packet):
        raise MalformedQuery("truncated question")
    qtype, _qclass = struct.unpack("!HH", packet[pos : pos + 4])
    return qid, flags, ".".join(labels) + ".", qtype, pos + 4


def answer(packet: bytes) -> tuple[bytes | None, dict[str, Any]]:
    """The reply to send (None: drop) and the facts to log."""
    try:
        qid, flags, qname, qtype, end = parse_question(packet)
    except MalformedQuery as e:
        if len(packet) < 12:
            return None, {"qname": None, "qtype": None, "error": str(e)}
        qid, flags = struct.unpack("!HH", packet[:4])
        if flags & 0x8000:
            return None, {"qname": None, "qtype": None, "error": str(e)}
        reply_flags = 0x8000 | (flags & 0x7900) | _FORMERR
        return struct.pack("!HHHHHH", qid, reply_flags, 0, 0, 0, 0), {"qname": None, "qtype": None, "error": str(e)}
    # QR=1, keep opcode and RD, RA=1, RCODE=NXDOMAIN; echo the question.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | _NXDOMAIN
    header = struct.pack("!HHHHHH", qid, reply_flags, 1, 0, 0, 0)
    return header + packet[12:end], {"qname": qname, "qtype": qtype}


def emit_stdout(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class DenyAllDns:
    def __init__(self, bottle: str, emit: Callable[[dict[str, Any]], None] = emit_stdout) -> None:
        self.bottle = bottle
        self.emit = emit
        self._servers: list[Any] = []

    def handle(self, packet: bytes, client: str, transport: str) -> bytes | None:
        reply, facts = answer(packet)
        self.emit({
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "bottle": self.bottle, "client": client, "protocol": f"dns/{transport}",
            "qname": facts["qname"], "qtype": facts["qtype"],
            "decision": "block", "reason": REASON if "error" not in facts else f"malformed dns query: {facts['error']}",
        })
        return reply

    async def start(self, host: str, port: int) -> tuple[int, int]:
        """Serve UDP and TCP; returns the bound (udp_port, tcp_port)."""
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        tcp = await asyncio.start_server(self._tcp, host, port)
        self._servers = [udp, tcp]
        return udp.get_extra_info("sockname")[1], tcp.sockets[0].getsockname()[1]

    def close(self) -> None:
        for server in self._servers:
            server.close()

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            while True:
                (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
                packet = await asyncio.wait_for(reader.readexactly(length), 10)
                reply = self.handle(packet, client, "tcp")
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, dns: DenyAllDns) -> None:
        self.dns = dns
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.dns.handle(data, addr[0], "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
