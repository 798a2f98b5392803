#!/usr/bin/env python3
"""A stdlib-only HTTPS test upstream that logs one JSON line per connection and request.

Endpoints: GET / (hello), GET /headers, GET /sse?n=&interval=, GET /bytes?n=,
any POST/PUT (body counted and hashed in chunks, chunked uploads supported), and a
WebSocket upgrade on any path (echoes each unfragmented message, logs it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import ssl
import sys
import time
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def log(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class BadRequest(Exception):
    pass


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("header too large") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return parts[0], parts[1], headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """Yield the body in chunks of at most CHUNK bytes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            while size:
                data = await reader.read(min(size, CHUNK))
                if not data:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(data)
                yield data
            await reader.readexactly(2)
    else:
        left = int(headers.get("content-length", "0") or 0)
        while left:
            data = await reader.read(min(left, CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            yield data


def response_head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_simple(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
    writer.write(response_head(status, reason, {"Content-Type": ctype, "Content-Length": str(len(body))}) + body)
    await writer.drain()


async def handle_request(name, method, target, headers, reader, writer) -> None:
    url = urlsplit(target)
    query = parse_qs(url.query)
    digest = hashlib.sha256()
    n = 0
    preview = bytearray()
    async for chunk in read_body(reader, headers):
        digest.update(chunk)
        n += len(chunk)
        if len(preview) < 4096:
            preview += chunk[: 4096 - len(preview)]
    log({"event": "request", "name": name, "method": method, "path": target, "headers": headers,
         "body_len": n, "body_sha256": digest.hexdigest(), "body_text": preview.decode("utf-8", "replace"),
         "time": time.time()})
    if method in ("POST", "PUT"):
        body = json.dumps({"received_bytes": n, "sha256": digest.hexdigest()}).encode()
        await send_simple(writer, 200, body, "application/json")
    elif method == "GET" and url.path == "/":
        await send_simple(writer, 200, f"hello from {name}\n".encode(), "text/plain; charset=utf-8")
    elif method == "GET" and url.path == "/headers":
        await send_simple(writer, 200, json.dumps(headers).encode(), "application/json")
    elif method == "GET" and url.path == "/sse":
        count = int(query.get("n", ["5"])[0])
        interval = float(query.get("interval", ["0.5"])[0])
        writer.write(response_head(200, "OK", {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "Transfer-Encoding": "chunked"}))
        for i in range(count):
            event = f"id: {i}\ndata: event {i} at {time.time():.3f}\n\n".encode()
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
            if i + 1 < count:
                await asyncio.sleep(interval)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    elif method == "GET" and url.path == "/bytes":
        total = int(query.get("n", ["0"])[0])
        writer.write(response_head(200, "OK", {"Content-Type": "application/octet-stream",
                                               "Content-Length": str(total)}))
        block = b"x" * CHUNK
        left = total
        while left:
            piece = block[: min(left, CHUNK)]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()
    else:
        await send_simple(writer, 404, b"not found\n", "text/plain")


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if second & 0x80 else b""
    data = await reader.readexactly(size)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return first & 0x0F, data


def ws_frame(opcode: int, data: bytes) -> bytes:
    """One unmasked, final frame (a server never masks)."""
    if len(data) < 126:
        size = bytes([len(data)])
    elif len(data) < 1 << 16:
        size = bytes([126]) + len(data).to_bytes(2, "big")
    else:
        size = bytes([127]) + len(data).to_bytes(8, "big")
    return bytes([0x80 | opcode]) + size + data


async def serve_websocket(name, target, headers, reader, writer) -> None:
    log({"event": "request", "name": name, "method": "GET", "path": target, "headers": headers,
         "body_len": 0, "time": time.time()})
    accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest()).decode()
    writer.write(response_head(101, "Switching Protocols",
                               {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}))
    await writer.drain()
    while True:
        opcode, data = await read_ws_frame(reader)
        log({"event": "ws_message", "name": name, "opcode": opcode, "len": len(data),
             "text": data.decode("utf-8", "replace")[:4096], "time": time.time()})
        writer.write(ws_frame(0xA if opcode == 0x9 else opcode, data))
        await writer.drain()
        if opcode == 0x8:
            return


async def handle_connection(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    log({"event": "connect", "name": name, "peer": list(peer) if peer else None, "time": time.time()})
    try:
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers = head
            if headers.get("upgrade", "").lower() == "websocket":
                return await serve_websocket(name, target, headers, reader, writer)
            await handle_request(name, method, target, headers, reader, writer)
            if headers.get("connection", "").lower() == "close":
                return
    except (BadRequest, ValueError):
        await send_simple(writer, 400, b"bad request\n", "text/plain")
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(
        lambda r, w: handle_connection(args.name, r, w), args.host, args.port, ssl=context, limit=65536
    )
    port = server.sockets[0].getsockname()[1]
    log({"event": "listening", "name": args.name, "host": args.host, "port": port})
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
