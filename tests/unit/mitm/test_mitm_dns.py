from __future__ import annotations

import asyncio
import struct

import pytest

from bottle.mitm.dns import DenyAllDns, answer


def query(name="example.com", qtype=1, qid=0x1234, flags=0x0100):
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


@pytest.mark.parametrize("qtype", [1, 28, 65, 255])
def test_every_query_gets_nxdomain_with_the_question_echoed(qtype):
    packet = query(qtype=qtype)
    reply, facts = answer(packet)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert (qid, flags & 0x8000, flags & 0x000F, flags & 0x0100, qd, an) == (0x1234, 0x8000, 3, 0x0100, 1, 0)
    assert reply[12:] == packet[12:]
    assert facts == {"qname": "example.com.", "qtype": qtype}


@pytest.mark.parametrize("packet, expect_reply", [
    (b"\x00", False),
    (struct.pack("!HHHHHH", 7, 0x8000, 1, 0, 0, 0), False),  # a response, not a query
    (struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + b"\x00" + b"\x00\x01\x00\x01", True),
    (query()[:-3], True),
])
def test_malformed_queries_are_dropped_or_formerr(packet, expect_reply):
    reply, _ = answer(packet)
    assert (reply is not None) is expect_reply
    if reply:
        assert struct.unpack("!H", reply[2:4])[0] & 0x000F == 1


def test_udp_and_tcp_answer_and_log():
    lines = []

    async def go():
        dns = DenyAllDns("bottle-x", emit=lines.append)
        udp_port, tcp_port = await dns.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", udp_port))
        transport.sendto(query("leak.example"))
        udp_reply = await asyncio.wait_for(got, 2)
        transport.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        q = query("other.example", qtype=28)
        writer.write(struct.pack("!H", len(q)) + q)
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        tcp_reply = await reader.readexactly(n)
        writer.close()
        dns.close()
        return udp_reply, tcp_reply

    udp_reply, tcp_reply = asyncio.run(go())
    assert udp_reply[3] & 0x0F == 3 and tcp_reply[3] & 0x0F == 3
    assert [(l["qname"], l["qtype"], l["decision"], l["reason"], l["client"]) for l in lines] == [
        ("leak.example.", 1, "block", "dns is disabled in the bottle", "127.0.0.1"),
        ("other.example.", 28, "block", "dns is disabled in the bottle", "127.0.0.1"),
    ]
