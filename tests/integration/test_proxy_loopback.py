"""The real launcher + real pipelock + the test upstream, all on 127.0.0.1, driven by curl."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.loopback import AWS_KEY, PLACEHOLDER, REAL_TOKEN, REPO, Loopback, free_port

pytestmark = pytest.mark.needs_pipelock

@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    lb = Loopback(tmp_path_factory.mktemp("loopback"))
    try:
        lb.start()
        yield lb
    finally:
        lb.stop()


def test_allowed_get_returns_upstream_body(loopback):
    assert loopback.curl("/") == (200, "hello from loopback\n")
    # The log line is written when the response completes, a moment after curl returns.
    deadline = time.monotonic() + 5
    while not [l for l in loopback.proxy_lines() if l.get("path") == "/"] and time.monotonic() < deadline:
        time.sleep(0.05)
    line = [l for l in loopback.proxy_lines() if l.get("path") == "/"][-1]
    assert (line["decision"], line["status"], line["rule"], line["host"]) == ("allow", 200, "egress.allow[0]", "localhost")


def test_secret_in_https_body_is_blocked_before_upstream(loopback):
    body = json.dumps({"messages": [{"content": f"here is my key {AWS_KEY} ok"}]})
    code, text = loopback.curl("/echo", "-X", "POST", "-H", "content-type: application/json", "--data", body)
    assert code == 403
    assert text == "bottle: blocked: scanner found DLP-AWS Access ID: Secret-like token detected (AWS Access ID)\n"
    assert not any(AWS_KEY in e.get("body_text", "") for e in loopback.upstream_events())
    line = loopback.proxy_lines()[-1]
    assert line["scanner"] == ["DLP-AWS Access ID"] and AWS_KEY not in json.dumps(line)


def test_sse_events_arrive_one_by_one(loopback):
    proc = subprocess.Popen(
        ["curl", "-sS", "-N", "--noproxy", "", "--proxy", f"http://127.0.0.1:{loopback.proxy_port}",
         "--cacert", str(loopback.bottle_ca), f"https://localhost:{loopback.upstream_port}/sse?n=4&interval=0.5"],
        stdout=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    arrivals = [time.monotonic() for line in proc.stdout if line.startswith(b"data:")]
    proc.wait(10)
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 1.0


def test_large_upload_streams_unscanned_with_bounded_memory(loopback):
    size = 200 * 1024 * 1024
    blob = loopback.tmp / "blob.bin"
    with open(blob, "wb") as f:
        f.truncate(size)
    code, text = loopback.curl("/upload", "-X", "PUT", "--data-binary", f"@{blob}", timeout=120)
    assert code == 200, text
    assert json.loads(text)["received_bytes"] == size
    status = Path(f"/proc/{loopback.procs['launcher'].pid}/status").read_text()
    hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert hwm_kb < 150 * 1024
    assert loopback.proxy_lines()[-1]["bytes_up"] == size


class WebSocketClient:
    """A minimal RFC 6455 client through the proxy's CONNECT tunnel (no third-party library)."""

    def __init__(self, lb: Loopback, path: str = "/ws?session=abc") -> None:
        raw = socket.create_connection(("127.0.0.1", lb.proxy_port), 10)
        authority = f"localhost:{lb.upstream_port}"
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert self._head(raw).split(b" ")[1] == b"200"
        self.sock = ssl.create_default_context(cafile=str(lb.bottle_ca)).wrap_socket(raw, server_hostname="localhost")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        assert self._head(self.sock).split(b" ")[1] == b"101"
        self.reader = self.sock.makefile("rb")

    @staticmethod
    def _head(sock) -> bytes:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            assert byte, f"connection closed after {head!r}"
            head += byte
        return head

    def send(self, opcode: int, data: bytes) -> None:
        assert len(data) < 126
        mask = os.urandom(4)
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(data)]) + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> tuple[int, bytes]:
        first, second = self.reader.read(2)
        assert second < 126
        return first & 0x0F, self.reader.read(second)

    def close(self) -> None:
        self.send(0x8, (1000).to_bytes(2, "big"))
        self.recv()
        self.sock.close()


def test_websocket_client_secret_never_reaches_upstream_but_clean_messages_do(loopback):
    ws = WebSocketClient(loopback)
    ws.send(0x1, b"hello")
    assert ws.recv() == (0x1, b"hello")
    ws.send(0x1, f"here is my key {AWS_KEY} ok".encode())
    ws.send(0x2, b"\x00\x01binary")
    ws.send(0x1, b"after")
    assert ws.recv() == (0x1, b"after")  # the two dropped messages were never echoed
    ws.close()
    echoed = [e["text"] for e in loopback.upstream_events() if e["event"] == "ws_message"]
    assert "hello" in echoed and "after" in echoed
    assert not any(AWS_KEY in text or "binary" in text for text in echoed)
    lines = loopback.wait_proxy_lines(lambda l: l.get("method") == "WS", 2)
    assert [(l["path"], l["status"], l["decision"], l["scanner"]) for l in lines] == [
        ("/ws?session=REDACTED", 403, "block", ["DLP-AWS Access ID"]),
        ("/ws?session=REDACTED", 415, "block", []),
    ]
    assert AWS_KEY not in json.dumps(lines)


@pytest.mark.parametrize("http_version", ["--http1.1", "--http2"])
def test_credential_echoed_by_upstream_reaches_the_agent_as_the_placeholder(loopback, http_version):
    logged = len(loopback.wait_proxy_lines(lambda l: l.get("path") == "/headers", 0))
    code, text = loopback.curl("/headers", http_version, "--compressed", "-H", f"authorization: Bearer {PLACEHOLDER}")
    assert code == 200, text
    echoed = json.loads(text)
    assert echoed["authorization"] == f"Bearer {PLACEHOLDER}"
    assert echoed["accept-encoding"] == "identity"
    assert REAL_TOKEN not in text
    sent = [e for e in loopback.upstream_events() if e["event"] == "request" and e["path"] == "/headers"][-1]
    assert sent["headers"]["authorization"] == f"Bearer {REAL_TOKEN}"  # upstream did get the real one
    line = loopback.wait_proxy_lines(lambda l: l.get("path") == "/headers", logged + 1)[-1]
    assert (line["decision"], line["token_ref"], line["scrubbed"]) == ("allow", "LOOPBACK_TOKEN", 1)


def test_host_without_rule_is_refused_without_upstream_contact(loopback):
    before = len([e for e in loopback.upstream_events() if e["event"] == "connect"])
    code, _ = loopback.curl("/", host="not-allowed.test")
    assert code == 0  # curl sees the 403 on CONNECT as a failed tunnel
    after = len([e for e in loopback.upstream_events() if e["event"] == "connect"])
    assert after == before
    line = loopback.proxy_lines()[-1]
    assert (line["method"], line["status"], line["decision"]) == ("CONNECT", 403, "block")


def test_sighup_reload_applies_and_broken_file_keeps_old_policy(loopback):
    original = loopback.policy_path.read_text()
    try:
        loopback.policy_path.write_text("{broken")
        loopback.procs["launcher"].send_signal(signal.SIGHUP)
        loopback.wait_status(lambda s: s["state"] == "error")
        assert loopback.curl("/")[0] == 200
        data = json.loads(original)
        data["allow"][0]["methods"] = ["POST"]
        loopback.policy_path.write_text(json.dumps(data))
        loopback.procs["launcher"].send_signal(signal.SIGHUP)
        loopback.wait_status(lambda s: s["state"] == "serving")
        code, text = loopback.curl("/")
        assert code == 403
        assert text.startswith("bottle: blocked: GET / is not allowed for localhost by egress.allow[0]")
    finally:
        loopback.policy_path.write_text(original)
        loopback.procs["launcher"].send_signal(signal.SIGHUP)
        loopback.wait_status(lambda s: s["state"] == "serving")


def test_files_streamed_by_receive_start_a_waiting_launcher_with_dns(loopback, tmp_path):
    import io
    import struct
    import tarfile

    run_dir = tmp_path / "run"
    (run_dir / "mitmproxy").mkdir(parents=True)
    dns_port, proxy_port = free_port(), free_port()
    policy = json.loads(loopback.policy_path.read_text())
    policy["listen"]["port"] = proxy_port
    policy["dns"] = {"host": "127.0.0.1", "port": dns_port}
    policy["upstream_ca"] = str(run_dir / "upstream-ca.pem")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "bottle.mitm.launcher", "--policy", str(run_dir / "policy.json"),
         "--confdir", str(run_dir / "mitmproxy"), "--wait-for-files", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in [("mitmproxy-ca.pem", (loopback.tmp / "run/mitmproxy/mitmproxy-ca.pem").read_bytes()),
                               ("policy.json", json.dumps(policy).encode()),
                               ("upstream-ca.pem", loopback.upstream_ca.read_bytes())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        received = subprocess.run([sys.executable, "-m", "bottle.mitm.receive", "--dir", str(run_dir)],
                                  input=buf.getvalue(), capture_output=True, env=env, timeout=60)
        assert received.returncode == 0, received.stderr
        assert json.loads((run_dir / "status.json").read_text())["state"] == "serving"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x04leak\x07example\x00\x00\x01\x00\x01",
                     ("127.0.0.1", dns_port))
            reply = s.recv(512)
        assert reply[3] & 0x0F == 3
    finally:
        launcher.send_signal(signal.SIGTERM)
        out, _ = launcher.communicate(timeout=10)
    assert launcher.returncode == 0
    dns_line = json.loads(out.decode().splitlines()[0])
    assert (dns_line["qname"], dns_line["decision"]) == ("leak.example.", "block")


def test_dead_scanner_fails_closed_with_503(loopback):
    loopback.procs["pipelock"].send_signal(signal.SIGTERM)
    loopback.procs["pipelock"].wait(10)
    # A request never sent before: one pipelock found clean earlier is remembered, not re-asked.
    code, text = loopback.curl("/?dead-scanner=1")
    assert code == 503
    assert text.startswith("bottle: blocked: scanner unavailable:")
