from __future__ import annotations

import asyncio
import struct

import pytest

from bottle.mitm.dns import DnsResponder, answer
from bottle.mitm.policy import parse_policy
from bottle.mitm.state import Runtime
from mitm_fixture import policy_text

AGENT = "172.20.0.3"
TRANSPARENT = {"ports": [{"port": 80, "listen": 15001}, {"port": 443, "listen": 15002}],
               "dns_address": "198.18.0.1"}


def responder(lines, **policy_changes):
    return DnsResponder(Runtime(policy=parse_policy(policy_text(**policy_changes))), emit=lines.append)


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
        dns = responder(lines)
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
    assert [(l["qname"], l["qtype"], l["decision"], l["reason"], l["client"], l["rule"]) for l in lines] == [
        ("leak.example.", 1, "block", "dns is disabled in the bottle", "127.0.0.1", None),
        ("other.example.", 28, "block", "dns is disabled in the bottle", "127.0.0.1", None),
    ]
    assert {l["bottle"] for l in lines} == {"bottle-demo-3f9a2c"}


def records(reply):
    """(rcode, [(type, ttl, rdata)]) of a reply to one question."""
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", reply[:12])
    pos = 12
    while reply[pos]:
        pos += reply[pos] + 1
    pos += 5
    out = []
    for _ in range(an):
        pointer, rtype, _cls, ttl, length = struct.unpack("!HHHIH", reply[pos:pos + 12])
        assert pointer == 0xC00C
        out.append((rtype, ttl, reply[pos + 12:pos + 12 + length]))
        pos += 12 + length
    assert pos == len(reply)
    return flags & 0x000F, out


@pytest.mark.parametrize("name, qtype, rcode, answers, decision, rule, reason", [
    ("api.anthropic.com", 1, 0, [(1, 60, bytes([198, 18, 0, 1]))], "allow", "egress.allow[0]", ""),
    ("API.Anthropic.com", 255, 0, [(1, 60, bytes([198, 18, 0, 1]))], "allow", "egress.allow[0]", ""),
    ("api.anthropic.com", 28, 0, [], "allow", "egress.allow[0]", ""),  # no IPv6 in the bottle: empty
    ("api.anthropic.com", 16, 0, [], "allow", "egress.allow[0]", ""),
    ("raw.githubusercontent.com", 1, 0, [(1, 60, bytes([198, 18, 0, 1]))], "allow", "egress.allow[1]", ""),
    ("exfil.example.com", 1, 3, [], "block", None, "no rule allows host exfil.example.com"),
    ("githubusercontent.com", 1, 3, [], "block", None, "no rule allows host githubusercontent.com"),
    ("4b4149414f53464f444e4e37.githubusercontent.com", 1, 3, [], "block", "egress.allow[1]",
     "host REDACTED.githubusercontent.com under *.githubusercontent.com: a label of 24 hex digits looks like "
     "encoded data"),
    ("pipelock", 1, 3, [], "block", None, "the scanner is not a destination"),
    ("127.0.0.1", 1, 3, [], "block", None, "IP literal destination 127.0.0.1 is not allowed; name the host"),
    ("bad_name.example", 1, 3, [], "block", None, "not a host name: 'bad_name.example.'"),
])
def test_transparent_dns_answers_only_names_the_policy_allows(name, qtype, rcode, answers, decision, rule, reason):
    lines = []
    reply = responder(lines, transparent=TRANSPARENT).handle(query(name, qtype=qtype), AGENT, "udp")
    assert records(reply) == (rcode, answers)
    (line,) = lines
    assert (line["decision"], line["rule"], line["reason"]) == (decision, rule, reason)


def test_transparent_dns_answers_only_the_agent():
    lines = []
    reply = responder(lines, transparent=TRANSPARENT).handle(query("api.anthropic.com"), "172.20.0.9", "udp")
    assert records(reply) == (3, [])
    assert (lines[0]["decision"], lines[0]["reason"]) == ("block", "client 172.20.0.9 is not this bottle's agent")


def test_in_discover_mode_transparent_dns_answers_names_no_rule_allows_and_logs_them():
    lines = []
    dns = responder(lines, transparent=TRANSPARENT, mode="discover")
    assert records(dns.handle(query("new.example.org"), AGENT, "udp")) == (0, [(1, 60, bytes([198, 18, 0, 1]))])
    assert records(dns.handle(query("pipelock"), AGENT, "udp")) == (3, [])  # never the scanner
    assert [(l["decision"], l["reason"]) for l in lines] == [
        ("would_block", "no rule allows host new.example.org"), ("block", "the scanner is not a destination")]


def test_a_name_that_looks_like_a_token_is_redacted_in_the_dns_log():
    lines = []
    responder(lines).handle(query("ghp1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b.example.com"), AGENT, "udp")
    assert lines[0]["qname"] == "REDACTED.example.com."


def test_an_error_while_deciding_answers_nxdomain_and_logs_a_block(monkeypatch, capsys):
    from bottle.mitm import dns as dns_module

    def broken(*args):
        raise RuntimeError("injected")

    monkeypatch.setattr(dns_module, "decide_name", broken)
    lines = []
    reply = responder(lines, transparent=TRANSPARENT).handle(query("api.anthropic.com"), AGENT, "udp")
    assert records(reply) == (3, [])
    assert (lines[0]["decision"], lines[0]["reason"]) == ("block", "internal error in bottle's dns answer (RuntimeError)")
    assert "bottle: dns answer failed, NXDOMAIN" in capsys.readouterr().err
