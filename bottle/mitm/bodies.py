"""A request body as the texts the DLP scanner must see.

Principle: whatever bytes go upstream are what gets scanned. The scanner sees the raw
body (after undoing Content-Encoding) as text, so nothing a server's parser might read
differently escapes it (a multipart preamble, part headers, a second boundary, a form
value's base64 padding), and, after it, the strings a parser decodes from it (JSON
escapes, percent-encoding, a part's Content-Transfer-Encoding or charset), in document
order so a key split across two adjacent fields can still be rejoined, with every pair
of a JSON object (a duplicate key included).
"""

from __future__ import annotations

import email.parser
import email.policy
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
    """The texts to scan: the decoded raw body first, then what a parser makes of it."""
    if len(body) > max_bytes:
        raise UnscannableBody(f"request body of {len(body)} bytes exceeds the scan limit of {max_bytes}", 413)
    body = decode_content(body, content_encoding, max_bytes)
    if not body:
        return []
    mime, _, _ = (content_type or "").partition(";")
    mime = mime.strip().lower()
    if mime == "multipart/form-data":
        parsed = _multipart_strings(body, content_type or "")
        raw = body.decode("utf-8", "replace")
    else:
        raw = _utf8(body, mime or "unknown")
        parsed = _parsed_strings(raw, mime)
    return [raw, *(s for s in parsed if s != raw)]


def _parsed_strings(text: str, mime: str) -> list[str]:
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return list(json_strings(json.loads(text, object_pairs_hook=_Pairs)))
        except (json.JSONDecodeError, RecursionError):
            return []
    if mime == "application/x-www-form-urlencoded":
        return [s for pair in parse_qsl(text, keep_blank_values=True) for s in pair]
    return []


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
        except TrailingData:
            raise UnscannableBody(f"{coding} body has data after its end, which cannot be scanned", 415) from None
        except Exception as e:
            raise UnscannableBody(f"{coding} body could not be decoded: {type(e).__name__}", 415) from None
    return body


def _too_big(max_bytes: int) -> UnscannableBody:
    return UnscannableBody(f"decoded request body exceeds the scan limit of {max_bytes} bytes", 413)


class TrailingData(ValueError):
    pass


def _zlib_members(body: bytes, max_bytes: int, wbits: int, *, multi: bool) -> bytes:
    """Every member of a zlib/gzip stream (gzip allows several, and servers read them all);
    bytes after the last one are refused: a server might read them as more body."""
    out = b""
    data = body
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, max_bytes + 1 - len(out))
        except zlib.error:
            if data is body:
                raise
            raise TrailingData("data after the end of the compressed body") from None
        if len(out) > max_bytes or d.unconsumed_tail:
            raise _too_big(max_bytes)
        out += d.flush()
        if len(out) > max_bytes:
            raise _too_big(max_bytes)
        if not d.eof:
            raise ValueError("truncated stream")
        data = d.unused_data
        if not data:
            return out
        if not multi:
            raise TrailingData("data after the end of the compressed body")


def _gzip(body: bytes, max_bytes: int) -> bytes:
    return _zlib_members(body, max_bytes, 16 + zlib.MAX_WBITS, multi=True)


def _deflate(body: bytes, max_bytes: int) -> bytes:
    try:
        return _zlib_members(body, max_bytes, zlib.MAX_WBITS, multi=False)
    except zlib.error:
        # Some clients send raw deflate without the zlib header.
        return _zlib_members(body, max_bytes, -zlib.MAX_WBITS, multi=False)


def _br(body: bytes, max_bytes: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=max_bytes + 1)
    if len(out) > max_bytes:
        raise _too_big(max_bytes)
    if not d.is_finished():
        if not d.can_accept_more_data():
            raise _too_big(max_bytes)
        raise ValueError("truncated stream")
    return out


def _zstd(body: bytes, max_bytes: int) -> bytes:
    import io

    import zstandard

    # Bounded first (a frame can expand without limit), then frame by frame to prove that
    # every frame is complete and nothing follows the last one.
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
    out = reader.read(max_bytes + 1)
    if len(out) > max_bytes:
        raise _too_big(max_bytes)
    data = body
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(data)
        if not d.eof:
            raise ValueError("truncated stream")
        data = d.unused_data
    return out


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _br, "zstd": _zstd}


def _utf8(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise UnscannableBody(f"binary {what} body cannot be scanned", 415) from None


class _Pairs(list):
    """A JSON object as its (key, value) pairs in document order, duplicates kept."""


def json_strings(value: object) -> Iterator[str]:
    """Keys and leaves of a JSON document in document order (iteratively: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Pairs):
            for key, child in reversed(item):
                stack.append(child)
                stack.append(str(key))
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                stack.append(child)
                stack.append(str(key))
        elif isinstance(item, list):
            stack.extend(reversed(item))
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


def request_head(method: str, target: str, headers: list[tuple[str, str]], *,
                 placeholder_header: str | None = None) -> str:
    """The request line and `name: value` header lines as they go on the wire. Only the
    value of a credential route's own header (checked to hold the placeholder) is left out."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        lines.append(f"{name}: " if placeholder_header and name.lower() == placeholder_header else f"{name}: {value}")
    return "\r\n".join(lines) + "\r\n\r\n"


def request_texts(head: str, body_texts: list[str], trailers: list[tuple[str, str]]) -> list[str]:
    """What the DLP scan sees of a request, as separate texts (pipelock judges each alone:
    joining texts can hide a finding one of them has on its own).

    First the request as it goes on the wire (head, the raw body, trailers), so bottle is
    never weaker than pipelock scanning the raw request; then, when a parser decodes the
    body into other strings, those strings in document order.
    """
    wire = head + (body_texts[0] if body_texts else "")
    if trailers:
        wire += "\r\n" + "\r\n".join(f"{name}: {value}" for name, value in trailers)
    texts = [wire]
    if len(body_texts) > 1:
        texts.append("\n".join(body_texts[1:]))
    return texts
