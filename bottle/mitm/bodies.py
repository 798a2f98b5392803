"""Unpack a request body into the strings the DLP scanner should see."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import zlib
from collections.abc import Iterator
from urllib.parse import parse_qsl


class UnscannableBody(Exception):
    """The body cannot be scanned; the request is refused with `status` (413 or 415)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def unpack_body(
    body: bytes, content_type: str | None, content_encoding: str | None, max_bytes: int
) -> list[str]:
    """Strings to scan: JSON keys and leaves, form fields, text multipart parts, or the text."""
    if len(body) > max_bytes:
        raise UnscannableBody(f"request body of {len(body)} bytes exceeds the scan limit of {max_bytes}", 413)
    body = decode_content(body, content_encoding, max_bytes)
    if not body:
        return []
    mime, _, _ = (content_type or "").partition(";")
    mime = mime.strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        text = _utf8(body, mime)
        try:
            return list(_json_strings(json.loads(text)))
        except (json.JSONDecodeError, RecursionError):
            return [text]
    if mime == "application/x-www-form-urlencoded":
        text = _utf8(body, mime)
        return [s for pair in parse_qsl(text, keep_blank_values=True) for s in pair]
    if mime == "multipart/form-data":
        return _multipart_strings(body, content_type or "")
    return [_utf8(body, mime or "unknown")]


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo Content-Encoding (last applied first) without ever producing more than max_bytes."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise UnscannableBody(f"content encoding {coding} cannot be scanned", 415)
        try:
            body = decoder(body, max_bytes)
        except UnscannableBody:
            raise
        except Exception as e:
            raise UnscannableBody(f"{coding} body could not be decoded: {type(e).__name__}", 415) from None
    return body


def _too_big(max_bytes: int) -> UnscannableBody:
    return UnscannableBody(f"decoded request body exceeds the scan limit of {max_bytes} bytes", 413)


def _zlib(body: bytes, max_bytes: int, wbits: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, max_bytes + 1)
    if len(out) > max_bytes or d.unconsumed_tail:
        raise _too_big(max_bytes)
    out += d.flush()
    if len(out) > max_bytes:
        raise _too_big(max_bytes)
    if not d.eof:
        raise ValueError("truncated stream")
    return out


def _gzip(body: bytes, max_bytes: int) -> bytes:
    return _zlib(body, max_bytes, 16 + zlib.MAX_WBITS)


def _deflate(body: bytes, max_bytes: int) -> bytes:
    try:
        return _zlib(body, max_bytes, zlib.MAX_WBITS)
    except zlib.error:
        # Some clients send raw deflate without the zlib header.
        return _zlib(body, max_bytes, -zlib.MAX_WBITS)


def _br(body: bytes, max_bytes: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=max_bytes + 1)
    if len(out) > max_bytes or not d.is_finished():
        if len(out) > max_bytes or not d.can_accept_more_data():
            raise _too_big(max_bytes)
        raise ValueError("truncated stream")
    return out


def _zstd(body: bytes, max_bytes: int) -> bytes:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
    out = reader.read(max_bytes + 1)
    if len(out) > max_bytes:
        raise _too_big(max_bytes)
    return out


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _br, "zstd": _zstd}


def _utf8(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise UnscannableBody(f"binary {what} body cannot be scanned", 415) from None


def _json_strings(value: object) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                yield str(k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            yield item
        elif isinstance(item, bool):
            yield "true" if item else "false"
        elif isinstance(item, (int, float)):
            yield str(item)


def _multipart_strings(body: bytes, content_type: str) -> list[str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise UnscannableBody("malformed multipart/form-data body cannot be scanned", 415)
    out: list[str] = []
    for part in message.iter_parts():
        if part.is_multipart():
            raise UnscannableBody("nested multipart body cannot be scanned", 415)
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        out.extend(str(x) for x in (name, filename) if x)
        cte = (part.get("content-transfer-encoding") or "").strip().lower()
        if cte not in ("", "7bit", "8bit", "binary", "base64", "quoted-printable"):
            raise UnscannableBody(f"multipart transfer encoding {cte} cannot be scanned", 415)
        payload = part.get_payload(decode=True) or b""
        try:
            out.append(payload.decode(part.get_content_charset() or "utf-8"))
        except (UnicodeDecodeError, LookupError):
            raise UnscannableBody(f"binary multipart part {name or '?'} cannot be scanned", 415) from None
    return out
