from __future__ import annotations

import asyncio
import json

import pytest

from bottle.mitm.incremental import scan_request
from bottle.mitm.scanner import ScannerClient, ScannerUnavailable, ScanResult, parse_scan_response, probe_scanner

DENY = {"status": "completed", "decision": "deny", "findings": [
    {"scanner": "dlp", "rule_id": "DLP-AWS Access ID", "severity": "critical",
     "message": "Secret-like token detected (AWS Access ID)"}]}


@pytest.mark.parametrize("status, body, expected", [
    (200, {"status": "completed", "decision": "allow"}, ScanResult("allow")),
    (200, {"status": "completed", "decision": "warn", "findings": [{"rule_id": "x"}]}, ScanResult("allow")),
    (200, DENY, ScanResult("deny", (("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)"),))),
])
def test_parse_scan_response(status, body, expected):
    assert parse_scan_response(status, json.dumps(body).encode()) == expected


@pytest.mark.parametrize("status, body, reason", [
    (401, b'{"status":"error","errors":[{"code":"unauthorized"}]}', "scanner answered HTTP 401: unauthorized"),
    (200, b'{"status":"error","errors":[{"code":"kind_disabled"}]}', "scanner did not complete the scan: kind_disabled"),
    (200, b"<html>", "scanner answered with unparseable JSON"),
    (200, b'{"status":"completed","decision":"maybe"}', "scanner answered unknown decision 'maybe'"),
])
def test_unusable_scan_response_is_unavailable(status, body, reason):
    with pytest.raises(ScannerUnavailable) as e:
        parse_scan_response(status, body)
    assert e.value.reason == reason


class FakeScanApi:
    """A tiny keep-alive HTTP/1.1 server standing in for pipelock."""

    def __init__(self, answer=DENY, delay=0.0, close_after=None):
        self.answer, self.delay, self.close_after = answer, delay, close_after
        self.connections = 0
        self.requests: list[dict] = []

    async def handle(self, reader, writer):
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
                body = await reader.readexactly(int(headers["Content-Length"]))
                self.requests.append({"auth": headers.get("Authorization"), "body": json.loads(body)})
                await asyncio.sleep(self.delay)
                out = json.dumps(self.answer).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(out)).encode() + b"\r\n\r\n" + out)
                await writer.drain()
                served += 1
                if self.close_after and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def with_server(api, fn):
    server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await fn(f"http://127.0.0.1:{port}/api/v1/scan")
    finally:
        server.close()


def test_client_reuses_connections_and_sends_bearer_token():
    api = FakeScanApi()

    async def go(url):
        client = ScannerClient(url, "tok", timeout=5)
        results = [await client.scan_text("AKIA...") for _ in range(3)]
        await client.close()
        return results

    results = asyncio.run(with_server(api, go))
    assert results[0].findings == (("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)"),)
    assert api.connections == 1
    assert api.requests[0] == {"auth": "Bearer tok", "body": {"kind": "dlp", "input": {"text": "AKIA..."}}}


def test_client_reconnects_when_the_server_closed_an_idle_connection():
    api = FakeScanApi(answer={"status": "completed", "decision": "allow"}, close_after=1)

    async def go(url):
        client = ScannerClient(url, "tok", timeout=5)
        first = await client.scan_url("https://a.test/")
        await asyncio.sleep(0.05)
        second = await client.scan_url("https://a.test/")
        return first, second

    assert asyncio.run(with_server(api, go)) == (ScanResult("allow"), ScanResult("allow"))
    assert api.connections == 2


def test_url_and_text_scans_run_concurrently_and_merge():
    api = FakeScanApi(delay=0.3)

    async def go(url):
        client = ScannerClient(url, "tok", timeout=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await scan_request(client, None, "https://a.test/", ["text"])
        return result, loop.time() - start

    result, elapsed = asyncio.run(with_server(api, go))
    assert result.decision == "deny" and len(result.findings) == 1
    assert elapsed < 0.55


def test_timeout_is_unavailable():
    async def go(url):
        return await ScannerClient(url, "tok", timeout=0.2).scan_text("x")

    with pytest.raises(ScannerUnavailable) as e:
        asyncio.run(with_server(FakeScanApi(delay=2), go))
    assert e.value.reason == "scanner did not answer within 0.2s"


def test_refused_connection_is_unavailable():
    with pytest.raises(ScannerUnavailable) as e:
        asyncio.run(ScannerClient("http://127.0.0.1:9/api/v1/scan", "tok", timeout=2).scan_text("x"))
    assert e.value.reason.startswith("scanner unreachable: ConnectionRefusedError")


def test_probe_scanner_is_false_when_nothing_listens():
    assert asyncio.run(probe_scanner("http://127.0.0.1:9/api/v1/scan", timeout=1)) is False
