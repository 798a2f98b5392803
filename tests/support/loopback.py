"""The real proxy launcher, real pipelock and an HTTPS upstream on 127.0.0.1: shared by the
loopback tests, the leak tests and benchmarks/proxy_latency.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bottle.launch.pipelock_config import render_pipelock_config
from bottle.mitm.policy import AllowRule, CapturedPort, Listen, Policy, Route, ScannerConfig, Transparent
from tests.support.certs import make_upstream_pki
from tests.support.prereq import pipelock_binary

REPO = Path(__file__).resolve().parents[2]
TOKEN = "testtoken-0123456789abcdef0123456789"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
REAL_TOKEN = "loopback-real-credential-5d41402abc4b2a76"
PLACEHOLDER = "bottle-placeholder-loopback-token-9e107d9d372bb682"


def pipelock_bin() -> str:
    return pipelock_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def make_certs(tmp: Path) -> dict[str, Path]:
    pki = make_upstream_pki(tmp / "upstream-pki", ["localhost"])
    return {"upstream_ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]}


def make_bottle_ca(confdir: Path, tmp: Path) -> Path:
    from bottle.launch.ca import generate_ca

    ca = generate_ca("bottle-loopback")
    confdir.mkdir(parents=True)
    (confdir / "mitmproxy-ca.pem").write_bytes(ca.mitmproxy_pem)
    (tmp / "bottle-ca.pem").write_bytes(ca.cert_pem)
    return tmp / "bottle-ca.pem"


def policy_json(*, proxy_port, upstream_ca, scanner_port, allow, routes=(), mode="enforce",
                scanner_mode="block", max_body_bytes=8388608, responses="warn",
                transparent: Transparent | None = None) -> str:
    """The policy file, written by the contract's own writer (bottle/mitm/policy.py)."""
    return Policy(
        bottle="bottle-loopback", mode=mode, listen=Listen(host="127.0.0.1", port=proxy_port),
        clients=("127.0.0.1",), allow=tuple(allow), routes=tuple(routes),
        placeholders={r.token_ref: PLACEHOLDER for r in routes},
        scanner=ScannerConfig(url=f"http://127.0.0.1:{scanner_port}/api/v1/scan", token=TOKEN, mode=scanner_mode,
                              timeout_seconds=10.0, max_body_bytes=max_body_bytes, responses=responses),
        upstream_ca=str(upstream_ca), dns=None, transparent=transparent,
    ).to_json()


ALLOW = [
    AllowRule(id="egress.allow[0]", host="localhost", methods=("GET", "POST"), paths=("/", "/echo", "/sse"),
              ports=(), private_upstream=True, scan_body=True),
    AllowRule(id="egress.allow[1]", host="localhost", methods=("PUT",), paths=("/upload",),
              ports=(), private_upstream=True, scan_body=False),
]
ROUTES = [
    Route(id="egress.routes[0]", host="localhost", methods=("GET",), paths=("/headers",), scheme="bearer",
          header=None, username=None, token_ref="LOOPBACK_TOKEN"),
]


class Loopback:
    """pipelock, an HTTPS upstream and bottle's launcher on 127.0.0.1, with a policy whose
    rules name `localhost` at the upstream's port. `upstream` picks the server: the test
    upstream (tests/upstream/server.py) or the hostile one (tests/support/hostile_upstream.py)."""

    def __init__(self, tmp: Path, *, upstream: str = "test", allow: Sequence[AllowRule] = (),
                 routes: Sequence[Route] | None = None, mode: str = "enforce", max_body_bytes: int = 8388608,
                 responses: str = "warn", transparent: bool = False) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.upstream_log = tmp / "upstream.log"
        self.proxy_log = tmp / "proxy.log"
        self.proxy_err = tmp / "proxy.err"
        self.record = tmp / "record"
        self.upstream_kind = upstream
        self.allow = list(allow) or ALLOW
        self.routes = ROUTES if routes is None else list(routes)
        self.mode = mode
        self.max_body_bytes = max_body_bytes
        self.responses = responses
        self.transparent = transparent

    def _upstream_argv(self, certs: dict[str, Path]) -> list[str]:
        tls = ["--port", str(self.upstream_port), "--cert", str(certs["cert"]), "--key", str(certs["key"])]
        if self.upstream_kind == "hostile":
            return [sys.executable, str(REPO / "tests/support/hostile_upstream.py"), *tls, "--record", str(self.record)]
        return [sys.executable, str(REPO / "tests/upstream/server.py"), "--host", "127.0.0.1", *tls,
                "--name", "loopback"]

    def start(self) -> None:
        binary = pipelock_bin()
        certs = make_certs(self.tmp)
        self.scanner_port = free_port()
        (self.tmp / "pipelock.yaml").write_text(render_pipelock_config(
            scan_listen=f"127.0.0.1:{self.scanner_port}", main_listen=f"127.0.0.1:{free_port()}",
            token=TOKEN, max_body_bytes=8388608))
        self.procs["pipelock"] = subprocess.Popen(
            [binary, "run", "--config", str(self.tmp / "pipelock.yaml")],
            stdout=open(self.tmp / "pipelock.log", "wb"), stderr=subprocess.STDOUT)
        self.upstream_port = free_port()
        self.procs["upstream"] = subprocess.Popen(self._upstream_argv(certs), stdout=open(self.upstream_log, "wb"),
                                                  stderr=subprocess.DEVNULL)
        confdir = self.tmp / "run" / "mitmproxy"
        self.bottle_ca = make_bottle_ca(confdir, self.tmp)
        self.proxy_port = free_port()
        allow = [dataclasses.replace(r, ports=(self.upstream_port,)) for r in self.allow]
        # Transparent: the upstream's port is captured to a listener of its own, as the
        # capture's nftables rules would redirect it (curl's --connect-to stands in for them).
        self.transparent_port = free_port() if self.transparent else None
        transparent = Transparent(ports=(CapturedPort(port=self.upstream_port, listen=self.transparent_port),),
                                  dns_address="198.18.0.1") if self.transparent else None
        self.policy_path = self.tmp / "run" / "policy.json"
        self.policy_path.write_text(policy_json(proxy_port=self.proxy_port, upstream_ca=certs["upstream_ca"],
                                                scanner_port=self.scanner_port, allow=allow, routes=self.routes,
                                                mode=self.mode, max_body_bytes=self.max_body_bytes,
                                                responses=self.responses, transparent=transparent))
        self.upstream_ca = certs["upstream_ca"]
        wait_port(self.scanner_port, self.procs["pipelock"])
        wait_port(self.upstream_port, self.procs["upstream"])
        env = {k: v for k, v in os.environ.items() if not k.endswith("PROXY") and not k.endswith("proxy")}
        env["PYTHONPATH"] = str(REPO)
        env["LOOPBACK_TOKEN"] = REAL_TOKEN
        self.procs["launcher"] = subprocess.Popen(
            [sys.executable, "-m", "bottle.mitm.launcher", "--policy", str(self.policy_path),
             "--confdir", str(confdir)],
            stdout=open(self.proxy_log, "wb"), stderr=open(self.proxy_err, "wb"), env=env, cwd=self.tmp)
        self.wait_status(lambda s: s.get("state") == "serving")

    def status(self) -> dict:
        try:
            return json.loads((self.tmp / "run" / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_status(self, predicate, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (status := self.status()) and predicate(status):
                return status
            if self.procs["launcher"].poll() is not None:
                raise RuntimeError(f"launcher exited: {self.proxy_err.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"status never matched: {self.status()} {self.proxy_err.read_text()}")

    def curl(self, path: str, *args: str, host: str = "localhost", timeout: float = 60) -> tuple[int, str]:
        out = subprocess.run(
            ["curl", "-sS", "--noproxy", "", "--proxy", f"http://127.0.0.1:{self.proxy_port}",
             "--cacert", str(self.bottle_ca), "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout),
             *args, f"https://{host}:{self.upstream_port}{path}"],
            capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body

    def curl_transparent(self, path: str, *args: str, host: str = "localhost", scheme: str = "https",
                         timeout: float = 60) -> tuple[int, str]:
        """curl with no proxy at all, its connection redirected to the transparent listener as
        the capture's DNAT would (`--connect-to`): it sends SNI and Host for `host`."""
        out = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--connect-to", f"{host}:{self.upstream_port}:127.0.0.1:"
             f"{self.transparent_port}", "--cacert", str(self.bottle_ca), "-o", "-", "-w", "\n%{http_code}",
             "--max-time", str(timeout), *args, f"{scheme}://{host}:{self.upstream_port}{path}"],
            capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_proxy_lines(self, predicate, count: int, seconds: float = 5) -> list[dict]:
        """Log lines are written a moment after the client has its answer."""
        deadline = time.monotonic() + seconds
        while len(lines := [l for l in self.proxy_lines() if predicate(l)]) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return lines

    def upstream_events(self) -> list[dict]:
        return [json.loads(line) for line in self.upstream_log.read_text().splitlines() if line.strip()]

    def proxy_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.proxy_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()



    def tunnel(self, host: str = "localhost", *, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLSocket:
        """A TLS connection to `host` at the upstream's port through the proxy's CONNECT."""
        raw = socket.create_connection(("127.0.0.1", self.proxy_port), 10)
        authority = f"{host}:{self.upstream_port}"
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = read_head(raw)
        if head.split(b" ")[1] != b"200":
            raise ConnectionRefusedError(head.decode(errors="replace"))
        context = ssl.create_default_context(cafile=str(self.bottle_ca))
        context.set_alpn_protocols(list(alpn))
        return context.wrap_socket(raw, server_hostname=host)

    def raw_http1(self, request: bytes, *, host: str = "localhost") -> tuple[int, bytes, bytes]:
        """Send raw HTTP/1.1 bytes through a tunnel; (status, head, body) of the answer."""
        with self.tunnel(host) as sock:
            sock.settimeout(30)
            sock.sendall(request.replace(b"{authority}", f"{host}:{self.upstream_port}".encode()))
            data = b""
            while chunk := recv_or_empty(sock):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
        return status, head, body

    def upstream_received(self) -> bytes:
        """Every decrypted byte the hostile upstream received, all connections."""
        return b"".join(p.read_bytes() for p in sorted(self.record.glob("conn-*.raw")))

    def upstream_records(self) -> list[dict]:
        path = self.record / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def rss_high_water_kb(self) -> int:
        status = Path(f"/proc/{self.procs['launcher'].pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def read_head(sock) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"connection closed after {head!r}")
        head += byte
    return head


def recv_or_empty(sock) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionError, TimeoutError, ssl.SSLError):
        return b""
