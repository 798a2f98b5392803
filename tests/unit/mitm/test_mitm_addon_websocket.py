"""Client messages on an allowed websocket go through the scanner before they are forwarded."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from bottle.mitm.scanner import ScannerUnavailable, ScanResult
from mitm_fixture import POLICY
from test_mitm_addon import LOG_KEYS, FakeScanner, make_addon, make_flow, run

AWS = ("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)")
RULES = [
    {"id": "egress.allow[0]", "host": "chat.test", "methods": ["GET"], "paths": ["/ws"],
     "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
    {"id": "egress.allow[1]", "host": "bulk.test", "methods": ["GET"], "paths": ["/ws"],
     "ports": [443], "private_upstream": False, "scan_body": False, "max_label_entropy": 3.5, "tls": "intercept"},
]


def upgraded(fake=None, host="chat.test", **changes):
    """An addon and a websocket flow whose upgrade request the addon allowed; `fake` scans the messages."""
    addon, lines = make_addon(FakeScanner(), allow=RULES, routes=[], **changes)
    f = run(addon, make_flow(method="GET", url=f"https://{host}/ws?session=abc"))
    assert lines[0]["decision"] == "allow"
    addon.scanner = fake or FakeScanner()
    f.websocket = tflow.twebsocketflow().websocket
    f.websocket.messages = []
    return addon, lines, f


def send(addon, f, content: bytes, from_client=True, opcode=Opcode.TEXT) -> WebSocketMessage:
    message = WebSocketMessage(opcode, from_client, content)
    f.websocket.messages.append(message)
    asyncio.run(addon.websocket_message(f))
    return message


def test_clean_client_text_is_scanned_and_forwarded():
    scanner = FakeScanner()
    addon, lines, f = upgraded(scanner)
    message = send(addon, f, b"hello")
    assert not message.dropped
    assert scanner.texts == ["hello"] and len(lines) == 1


def test_client_text_with_a_secret_is_dropped_and_logged_without_the_secret():
    addon, lines, f = upgraded(FakeScanner(text=ScanResult("deny", (AWS,))))
    message = send(addon, f, b"key AKIAIOSFODNN7EXAMPLE")
    assert message.dropped
    line = lines[-1]
    assert set(line) == LOG_KEYS
    assert {k: line[k] for k in ("method", "host", "path", "status", "decision", "rule", "reason", "scanner",
                                 "bytes_up", "bytes_down")} == {
        "method": "WS", "host": "chat.test", "path": "/ws?session=REDACTED", "status": 403, "decision": "block",
        "rule": "egress.allow[0]", "reason": "scanner found DLP-AWS Access ID: Secret-like token detected (AWS Access ID)",
        "scanner": ["DLP-AWS Access ID"], "bytes_up": 24, "bytes_down": 0,
    }
    assert "AKIA" not in json.dumps(lines)


def test_server_messages_pass_unscanned():
    scanner = FakeScanner(text=ScanResult("deny", (AWS,)))
    addon, lines, f = upgraded(scanner)
    assert not send(addon, f, b"AKIAIOSFODNN7EXAMPLE", from_client=False).dropped
    assert not send(addon, f, b"\x00\xff", from_client=False, opcode=Opcode.BINARY).dropped
    assert scanner.texts == [] and len(lines) == 1


def test_scanner_unavailable_drops_the_message():
    addon, lines, f = upgraded(FakeScanner(error=ScannerUnavailable("scanner did not answer within 10s")))
    assert send(addon, f, b"hello").dropped
    assert (lines[-1]["status"], lines[-1]["decision"], lines[-1]["reason"]) == (
        503, "block", "scanner unavailable: scanner did not answer within 10s")


def test_binary_client_message_is_dropped_as_unscannable():
    scanner = FakeScanner()
    addon, lines, f = upgraded(scanner)
    assert send(addon, f, b"\x00\x01", opcode=Opcode.BINARY).dropped
    assert (lines[-1]["status"], lines[-1]["reason"]) == (415, "binary websocket message cannot be scanned")
    assert scanner.texts == []


def test_binary_client_message_passes_on_a_scan_body_false_rule_but_text_is_still_scanned():
    scanner = FakeScanner(text=ScanResult("deny", (AWS,)))
    addon, lines, f = upgraded(scanner, host="bulk.test")
    assert not send(addon, f, b"\x00\x01", opcode=Opcode.BINARY).dropped
    assert send(addon, f, b"AKIAIOSFODNN7EXAMPLE").dropped
    assert [line["method"] for line in lines] == ["GET", "WS"]


def test_text_over_the_scan_limit_is_dropped():
    addon, lines, f = upgraded()
    assert send(addon, f, b"x" * 1001).dropped
    assert (lines[-1]["status"], lines[-1]["reason"]) == (
        413, "websocket message of 1001 bytes exceeds the scan limit of 1000")


def test_audit_mode_forwards_and_logs_would_block():
    addon, lines, f = upgraded(FakeScanner(text=ScanResult("deny", (AWS,))),
                               scanner={**POLICY["scanner"], "mode": "audit"})
    assert not send(addon, f, b"AKIAIOSFODNN7EXAMPLE").dropped
    assert (lines[-1]["method"], lines[-1]["status"], lines[-1]["decision"], lines[-1]["scanner"]) == (
        "WS", 101, "would_block", ["DLP-AWS Access ID"])


def test_history_is_trimmed_to_the_last_message():
    addon, _, f = upgraded()
    for i in range(3):
        send(addon, f, f"m{i}".encode())
    assert [m.content for m in f.websocket.messages] == [b"m2"]


def test_an_error_while_checking_drops_the_message_and_kills_the_flow():
    addon, _, f = upgraded(FakeScanner(error=RuntimeError("boom")))
    assert send(addon, f, b"hello").dropped
    assert f.error is not None and f.error.msg == "Connection killed."


@pytest.mark.parametrize("content", [b"", b"caf\xc3\xa9"])
def test_text_is_sent_to_the_scanner_as_text(content):
    scanner = FakeScanner()
    addon, _, f = upgraded(scanner)
    send(addon, f, content)
    assert scanner.texts == [content.decode()]
