from __future__ import annotations

import base64
import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from bottle.mitm.bodies import UnscannableBody, unpack_body

MULTIPART = (
    b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nplain words\r\n"
    b"--XyZ\r\nContent-Disposition: form-data; name=\"b64\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(b"hidden AKIA") + b"\r\n"
    b"--XyZ\r\nContent-Disposition: form-data; name=\"qp\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9\r\n--XyZ--\r\n"
)
BINARY_PART = (
    b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n\xff\xfe\x00\x81\r\n--XyZ--\r\n"
)
JSON = json.dumps({"k": ["v", 1, True, {"n\u00e9": "\u00fc"}], "z": None}).encode()


JSON_STRINGS = ["k", "v", "1", "true", "n\u00e9", "\u00fc", "z"]  # document order


@pytest.mark.parametrize("body, ctype, encoding, expected", [
    (b"", "application/json", None, []),
    (JSON, "application/json", None, [JSON.decode(), *JSON_STRINGS]),
    (JSON, "application/vnd.api+json; charset=utf-8", "gzip", [JSON.decode(), *JSON_STRINGS]),
    (b'{"k": "first", "k": "second"}', "application/json", None,
     ['{"k": "first", "k": "second"}', "k", "first", "k", "second"]),
    (b"{not json", "application/json", None, ["{not json"]),
    (b"a=1&b=%41KIA&c", "application/x-www-form-urlencoded", None,
     ["a=1&b=%41KIA&c", "a", "1", "b", "AKIA", "c", ""]),
    (MULTIPART, "multipart/form-data; boundary=XyZ", None,
     [MULTIPART.decode(), "note", "plain words", "b64", "hidden AKIA", "qp", "caf\u00e9"]),
    (b"part one part two", "text/plain", None, ["part one part two"]),
    (b"hello", "text/plain", "deflate", ["hello"]),
    (b"hello", None, "br", ["hello"]),
    (b"hello", "application/octet-stream", "zstd", ["hello"]),
    (b"hello", "text/plain", "identity", ["hello"]),
])
def test_body_texts_are_the_raw_body_then_its_parsed_strings(body, ctype, encoding, expected):
    encoders = {None: lambda b: b, "identity": lambda b: b, "gzip": gzip.compress, "deflate": zlib.compress,
                "br": brotli.compress, "zstd": zstandard.ZstdCompressor().compress}
    assert unpack_body(encoders[encoding](body), ctype, encoding, 10_000) == expected


@pytest.mark.parametrize("body, ctype, encoding, status, reason", [
    (b"\xff\xfe\x00", "application/octet-stream", None, 415, "binary application/octet-stream body cannot be scanned"),
    (b"\xff\xfe\x00", None, None, 415, "binary unknown body cannot be scanned"),
    (BINARY_PART, "multipart/form-data; boundary=XyZ", None, 415, "binary multipart part f cannot be scanned"),
    (b"abc", "text/plain", "compress", 415, "content encoding compress cannot be scanned"),
    (b"not gzip", "text/plain", "gzip", 415, "gzip body could not be decoded: error"),
    (gzip.compress(b"a") + b"hidden after the end", "text/plain", "gzip", 415,
     "gzip body has data after its end, which cannot be scanned"),
    (zlib.compress(b"a") + b"hidden", "text/plain", "deflate", 415,
     "deflate body has data after its end, which cannot be scanned"),
    (zstandard.ZstdCompressor().compress(b"a") + b"hidden", "text/plain", "zstd", 415,
     "zstd body could not be decoded: ZstdError"),
    (b"x" * 201, "text/plain", None, 413, "request body of 201 bytes exceeds the scan limit of 200"),
    (gzip.compress(b"x" * 10_000), "text/plain", "gzip", 413, "decoded request body exceeds the scan limit of 200 bytes"),
    (brotli.compress(b"x" * 10_000), "text/plain", "br", 413, "decoded request body exceeds the scan limit of 200 bytes"),
    (zstandard.ZstdCompressor().compress(b"x" * 10_000), "text/plain", "zstd", 413,
     "decoded request body exceeds the scan limit of 200 bytes"),
    (zlib.compress(b"x" * 10_000), "text/plain", "deflate", 413,
     "decoded request body exceeds the scan limit of 200 bytes"),
])
def test_unscannable_bodies(body, ctype, encoding, status, reason):
    with pytest.raises(UnscannableBody) as e:
        unpack_body(body, ctype, encoding, 200)
    assert (e.value.status, e.value.reason) == (status, reason)


def test_every_gzip_member_is_decoded_as_a_server_would():
    body = gzip.compress(b"harmless ") + gzip.compress(b"AKIAIOSFODNN7EXAMPLE")
    assert unpack_body(body, "text/plain", "gzip", 10_000) == ["harmless AKIAIOSFODNN7EXAMPLE"]
