"""The agent's DNS, answered by the proxy itself; nothing is ever looked up upstream.

With proxy capture every query gets NXDOMAIN at once, so stray lookups in the agent fail in
milliseconds instead of timing out. With transparent capture (docs/prds/0009) a name the
policy allows is answered with the capture's one address (A; every other type empty) and
every other name NXDOMAIN: the agent learns no real address at all, and where a connection
goes is decided by the name it then carries (TLS SNI, Host). Discover mode answers every
name it would log as would_block. Only the agent gets answers; an error answers NXDOMAIN.
One JSON log line per query."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any

from bottle.mitm import decide
from bottle.mitm.decide import Verdict
from bottle.mitm.policy import HOST_LABEL, Policy, normalize_host
from bottle.mitm.redact import loggable_host

REASON = "dns is disabled in the bottle"
TTL_SECONDS = 60
_NXDOMAIN = 3
_FORMERR = 1
_A = 1
_ANY = 255
_NAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*")


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


def answer(packet: bytes, address_for: Callable[[str], str | None] = lambda _qname: None
           ) -> tuple[bytes | None, dict[str, Any]]:
    """The reply to send (None: drop) and the facts to log. `address_for(qname)` is the
    IPv4 address to answer a name with, or None for NXDOMAIN; a name it answers gets that
    address for A (and ANY) queries and an empty answer for every other type."""
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
    address = address_for(qname)
    # QR=1, keep opcode and RD, RA=1; echo the question.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | (_NXDOMAIN if address is None else 0)
    records = b""
    if address is not None and qtype in (_A, _ANY):
        # The name as a pointer to the question (offset 12), type A, class IN, TTL, 4 bytes.
        records = struct.pack("!HHHIH", 0xC00C, _A, 1, TTL_SECONDS, 4) + socket.inet_aton(address)
    header = struct.pack("!HHHHHH", qid, reply_flags, 1, 1 if records else 0, 0, 0)
    return header + packet[12:end] + records, {"qname": qname, "qtype": qtype}


def nxdomain(packet: bytes) -> bytes | None:
    """NXDOMAIN for a query that could not be decided (None: nothing that can be answered)."""
    try:
        return answer(packet)[0]
    except Exception:
        return None


def decide_name(policy: Policy | None, client: str, qname: str) -> Verdict:
    """Whether a name is answered: only with transparent capture, only for the agent, only a
    host name the policy allows (decide.check_name: IP literals, the scanner, wildcard labels
    that look like data and unknown hosts are refused; discover mode answers them)."""
    if policy is None or policy.transparent is None:
        return decide.block(0, REASON)
    if not (verdict := decide.check_client(policy, client)).allowed:
        return verdict
    name = normalize_host(qname)
    if not _NAME.fullmatch(name):
        return decide.block(0, f"not a host name: {qname!r}")
    return decide.check_name(policy, name)


def _loggable(qname: str | None) -> str | None:
    """Labels that look like tokens are redacted, as in request lines (a name can carry data)."""
    return None if qname is None else loggable_host(qname.rstrip(".")) + "."


def emit_stdout(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class DnsResponder:
    """Answers the agent's DNS from the live policy: with proxy capture every query is
    refused; with transparent capture the names the policy allows get its one address."""

    def __init__(self, runtime: Any, emit: Callable[[dict[str, Any]], None] = emit_stdout) -> None:
        self.runtime = runtime  # bottle.mitm.state.Runtime
        self.emit = emit
        self._servers: list[Any] = []

    def handle(self, packet: bytes, client: str, transport: str) -> bytes | None:
        policy = self.runtime.policy
        verdicts: list[Verdict] = []

        def address_for(qname: str) -> str | None:
            verdicts.append(verdict := decide_name(policy, client, qname))
            return policy.transparent.dns_address if verdict.allowed else None

        try:
            reply, facts = answer(packet, address_for)
            verdict = verdicts[0] if verdicts else decide.block(0, f"malformed dns query: {facts['error']}")
        except Exception as e:  # fail closed: a name that could not be decided does not exist
            print(f"bottle: dns answer failed, NXDOMAIN: {traceback.format_exc()}", file=sys.stderr, flush=True)
            reply, facts = nxdomain(packet), {"qname": None, "qtype": None}
            verdict = decide.block(0, f"internal error in bottle's dns answer ({type(e).__name__})")
        self.emit({
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "bottle": policy.bottle if policy else None, "client": client, "protocol": f"dns/{transport}",
            "qname": _loggable(facts["qname"]), "qtype": facts["qtype"],
            "decision": "would_block" if verdict.would_block else "allow" if verdict.allowed else "block",
            "rule": verdict.rule_id, "reason": verdict.reason,
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
    def __init__(self, dns: DnsResponder) -> None:
        self.dns = dns
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.dns.handle(data, addr[0], "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
