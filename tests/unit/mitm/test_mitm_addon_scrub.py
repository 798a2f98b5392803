"""An upstream that echoes the injected credential gives the agent the placeholder instead."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from mitm_fixture import P_BASIC, P_EXAMPLE, P_GITHUB
from test_mitm_addon import make_addon, make_flow

EXAMPLE = ("https://api.example.com/debug", [("authorization", f"Bearer {P_EXAMPLE}")])
BLOCKED_COMPRESSED = ("bottle: blocked: compressed response to a credentialed request cannot be checked "
                      "for the credential\n")


def exchange(addon, f, chunks: list[bytes], headers=(), status=200, trailers=None):
    """What mitmproxy does for a streamed response; returns the bytes the agent receives."""
    sent: list[bytes] = []

    async def go():
        await addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None, f.response.get_text()
        body = b"".join(chunks)
        f.response = http.Response.make(status, b"", dict(headers))
        f.response.headers["content-length"] = str(len(body))  # make() counts the empty content
        await addon.responseheaders(f)
        stream = f.response.stream
        if callable(stream):
            for chunk in chunks + [b""]:
                out = stream(chunk)
                sent.extend([out] if isinstance(out, bytes) else out)
        else:
            f.response.content = body
            sent.append(body)
        if trailers:
            f.response.trailers = http.Headers(**trailers)
        await addon.response(f)

    with taddons.context(addon):
        asyncio.run(go())
    assert b"" not in sent[:-1]  # an empty chunk would end a chunked body early
    return b"".join(sent)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_credential_echoed_in_the_body_is_replaced_even_when_split_across_chunks():
    addon, lines = make_addon()
    url, headers = EXAMPLE
    echoed = b'{"authorization": "Bearer example-real", "again": "example-real"}'
    for size in (1, 3, 7, len(echoed)):
        lines.clear()
        f = make_flow("GET", url, headers=headers)
        got = exchange(addon, f, split(echoed, size))
        assert got == echoed.replace(b"example-real", P_EXAMPLE.encode())
        assert (lines[0]["scrubbed"], lines[0]["bytes_down"]) == (2, len(got))
        assert "content-length" not in f.response.headers
        assert f.response.headers["transfer-encoding"] == "chunked"


def test_credential_echoed_in_headers_and_trailers_is_replaced():
    addon, lines = make_addon()
    f = make_flow("GET", *EXAMPLE)
    exchange(addon, f, [b"ok"], headers={"x-echo-authorization": "Bearer example-real"},
             trailers={"x-trailer": "example-real"})
    assert f.response.headers["x-echo-authorization"] == f"Bearer {P_EXAMPLE}"
    assert f.response.trailers["x-trailer"] == P_EXAMPLE
    assert lines[0]["scrubbed"] == 2


@pytest.mark.parametrize("url, placeholder, real, sent", [
    pytest.param("https://basic.test/x", P_BASIC, b"alice:s3cret", base64.b64encode(b"alice:s3cret"), id="pair"),
    pytest.param("https://github.com/org/repo.git/info/refs", P_GITHUB, b"ghp_realvalue",
                 base64.b64encode(b"x-access-token:ghp_realvalue"), id="username"),
])
def test_basic_credential_is_replaced_in_its_plain_and_base64_forms(url, placeholder, real, sent):
    addon, lines = make_addon()
    f = make_flow("GET", url)
    got = exchange(addon, f, split(b"Authorization: Basic " + sent + b"\nuser:pass=" + real + b"\n", 5))
    assert got == f"Authorization: Basic {placeholder}\nuser:pass={placeholder}\n".encode()
    assert lines[0]["scrubbed"] == 2


def test_routed_request_asks_upstream_for_an_uncompressed_answer():
    addon, _ = make_addon()
    routed = make_flow("GET", *EXAMPLE)
    routed.request.headers["accept-encoding"] = "gzip, br"
    exchange(addon, routed, [b"ok"])
    assert routed.request.headers.get_all("accept-encoding") == ["identity"]
    plain = make_flow("GET", "https://raw.githubusercontent.com/a", headers=[("accept-encoding", "gzip")])
    exchange(addon, plain, [b"ok"])
    assert plain.request.headers["accept-encoding"] == "gzip"


def test_compressed_answer_to_a_credentialed_request_is_refused_with_502():
    addon, lines = make_addon()
    f = make_flow("GET", *EXAMPLE)
    got = exchange(addon, f, [b"\x1f\x8b compressed example-real", b"more"], headers={"content-encoding": "gzip"})
    assert got == BLOCKED_COMPRESSED.encode()
    assert (f.response.status_code, f.response.get_text()) == (502, BLOCKED_COMPRESSED)
    assert f.response.headers["x-bottle-rule"] == "egress.allow[3]"
    line = lines[0]
    assert (line["status"], line["decision"], line["reason"], line["bytes_down"]) == (
        502, "block", BLOCKED_COMPRESSED[len("bottle: blocked: "):-1], len(BLOCKED_COMPRESSED))


def test_compressed_answer_without_a_body_only_has_its_headers_scrubbed():
    addon, lines = make_addon()
    f = make_flow("HEAD", *EXAMPLE)
    exchange(addon, f, [], headers={"content-encoding": "gzip", "x-echo": "example-real"})
    assert (f.response.status_code, f.response.headers["x-echo"]) == (200, P_EXAMPLE)
    assert lines[0]["decision"] == "allow"


def test_unrouted_response_is_passed_through_untouched():
    addon, lines = make_addon()
    f = make_flow("GET", "https://raw.githubusercontent.com/a")
    body = b"example-real is not bottle's to hide here"
    assert exchange(addon, f, split(body, 4)) == body
    assert f.response.headers["content-length"] == str(len(body))
    assert lines[0]["scrubbed"] == 0
    assert P_EXAMPLE not in json.dumps(lines)


@pytest.mark.parametrize("http2, upstream_version, chunked", [
    (False, "HTTP/1.1", True), (True, "HTTP/1.1", False), (False, "HTTP/1.0", False),
])
def test_scrubbed_body_is_framed_for_the_agent_without_content_length(http2, upstream_version, chunked):
    addon, _ = make_addon()
    f = make_flow("GET", *EXAMPLE, http2=http2)

    async def go():
        await addon.requestheaders(f)
        await addon.request(f)
        f.response = http.Response.make(200, b"", {})
        f.response.http_version = upstream_version
        f.response.headers["content-length"] = "12"
        await addon.responseheaders(f)

    with taddons.context(addon):
        asyncio.run(go())
    assert "content-length" not in f.response.headers
    assert ("transfer-encoding" in f.response.headers) is chunked
