"""Async client for pipelock's scan API (`POST /api/v1/scan`), fail-closed.

A small keep-alive pool of HTTP/1.1 connections over asyncio streams, using h11
(a mitmproxy dependency).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11


class ScannerUnavailable(Exception):
    """No usable verdict: unreachable, timeout, non-200, status error, unparseable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ScanResult:
    decision: str  # "allow" | "deny"
    findings: tuple[tuple[str, str], ...] = field(default=())
    url_denied: bool = False  # the url scan (not only the text scan) denied


ALLOW = ScanResult("allow")


def parse_scan_response(status: int, body: bytes) -> ScanResult:
    if status != 200:
        raise ScannerUnavailable(f"scanner answered HTTP {status}: {_error_codes(body)}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ScannerUnavailable("scanner answered with unparseable JSON") from None
    if not isinstance(data, dict) or data.get("status") != "completed":
        raise ScannerUnavailable(f"scanner did not complete the scan: {_error_codes(body)}")
    decision = data.get("decision")
    if decision not in ("allow", "deny", "warn"):
        raise ScannerUnavailable(f"scanner answered unknown decision {decision!r}")
    findings = tuple(
        (str(f.get("rule_id", "?")), str(f.get("message", "")))
        for f in data.get("findings") or []
        if isinstance(f, dict)
    )
    return ScanResult("deny" if decision == "deny" else "allow", findings if decision == "deny" else ())


def _error_codes(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return ", ".join(str(e.get("code")) for e in errors) or "no error code"
    except Exception:
        return "no error code"


def merge_results(results: list[ScanResult]) -> ScanResult:
    denied = [r for r in results if r.decision == "deny"]
    if not denied:
        return ALLOW
    # pipelock may report one pattern once per encoding it found it in.
    return ScanResult("deny", tuple(dict.fromkeys(f for r in denied for f in r.findings)))


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


class ScannerClient:
    """Scan URLs and text with pipelock; every failure raises ScannerUnavailable."""

    def __init__(self, url: str, token: str, timeout: float = 10.0, max_idle: int = 16) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"scanner url must be http://host:port/path, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.token = token
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def scan_url(self, url: str) -> ScanResult:
        return await self._scan({"kind": "url", "input": {"url": url}})

    async def scan_text(self, text: str) -> ScanResult:
        if not text:
            return ALLOW
        return await self._scan({"kind": "dlp", "input": {"text": text}})

    async def scan_content(self, text: str) -> ScanResult:
        """Prompt injection aimed at the agent, in what an upstream answered."""
        if not text:
            return ALLOW
        return await self._scan({"kind": "prompt_injection", "input": {"content": text}})

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _scan(self, payload: dict) -> ScanResult:
        body = json.dumps(payload).encode()
        try:
            status, answer = await asyncio.wait_for(self._post(body), self.timeout)
        except ScannerUnavailable:
            raise
        except TimeoutError:
            raise ScannerUnavailable(f"scanner did not answer within {self.timeout:g}s") from None
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError) as e:
            raise ScannerUnavailable(f"scanner unreachable: {type(e).__name__}: {e}") from None
        return parse_scan_response(status, answer)

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        while self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, body)
            except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, _StaleConnection):
                conn.close()  # a pooled connection the server closed meanwhile; try the next
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = _Conn(reader, writer)
        try:
            return await self._exchange(conn, body)
        except _StaleConnection:
            conn.close()
            raise ScannerUnavailable("scanner closed the connection without answering") from None

    async def _exchange(self, conn: _Conn, body: bytes) -> tuple[int, bytes]:
        ok = False
        try:
            request = h11.Request(
                method="POST",
                target=self.path,
                headers=[
                    ("Host", f"{self.host}:{self.port}"),
                    ("Authorization", f"Bearer {self.token}"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ],
            )
            conn.writer.write(conn.h11.send(request) + conn.h11.send(h11.Data(data=body)) + conn.h11.send(h11.EndOfMessage()))
            await conn.writer.drain()
            status = 0
            chunks: list[bytes] = []
            got_any = False
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.reader.read(65536)
                    if not data and not got_any:
                        raise _StaleConnection()
                    conn.h11.receive_data(data)
                    continue
                got_any = True
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ScannerUnavailable("scanner closed the connection mid-answer")
            ok = True
            return status, b"".join(chunks)
        finally:
            if ok and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                conn.h11.start_next_cycle()
                if len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                else:
                    conn.close()
            elif not ok:
                conn.close()


class _StaleConnection(Exception):
    pass


async def probe_scanner(url: str, timeout: float = 2.0) -> bool:
    """An unauthenticated POST answered with 401 or 405 proves the scan API is up."""
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 80), timeout
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    fields = line.split()
    return len(fields) >= 2 and fields[1] in (b"401", b"405")
