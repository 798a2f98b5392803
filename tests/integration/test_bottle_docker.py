"""`bottle start` for real: pipelock, the egress proxy and the agent as containers on a real
engine, with a real HTTPS upstream container standing in for api.anthropic.com.

Every test runs twice through the `engine` fixture: on Docker and on rootful Podman."""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AGENT_RULES, Engine, bottle_env, leftovers

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
REAL_TOKEN = "bottle-test-real-token-7d1e5a9c3b0f4e2a"


def curl(url: str, *args: str) -> str:
    quoted = " ".join(f"'{a}'" for a in args)
    return f"curl -sS -o /tmp/body -w '%{{http_code}}' {quoted} {url}; echo; cat /tmp/body; echo"


def test_clean_https_get_returns_the_upstreams_real_body(manifest, run_bottle, upstream):
    run = run_bottle(manifest(AGENT_RULES), "sh", "-c", curl("https://api.anthropic.com/"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["200", "hello from upstream"]
    assert "bottle: mitm ca fingerprint: sha256:" in run.stderr
    (line,) = [r for r in run.requests() if r["path"] == "/"]
    assert (line["decision"], line["status"], line["host"], line["scheme"]) == ("allow", 200, "api.anthropic.com", "https")


def test_secret_in_https_body_is_blocked_and_never_reaches_upstream(manifest, run_bottle, upstream):
    marker = f"marker-{time.time_ns()}"
    body = json.dumps({"note": marker, "aws_access_key_id": AWS_KEY})
    run = run_bottle(manifest(AGENT_RULES), "sh", "-c",
                     curl("https://api.anthropic.com/echo", "-X", "POST", "-H", "content-type: application/json",
                          "--data", body))
    assert run.returncode == 0, run.stderr
    status, message = run.stdout.splitlines()[:2]
    assert status == "403"
    assert "DLP-AWS Access ID" in message and AWS_KEY not in message
    assert not [r for r in upstream.requests() if marker in r.get("body_text", "")]
    (line,) = [r for r in run.requests() if r["path"] == "/echo"]
    assert line["decision"] == "block" and line["scanner"] == ["DLP-AWS Access ID"]
    assert AWS_KEY not in run.log_path.read_text()


def test_host_outside_the_rules_is_refused_and_upstream_sees_no_connection(manifest, run_bottle, upstream):
    before = len(upstream.connects())
    run = run_bottle(manifest(AGENT_RULES), "sh", "-c",
                     "curl -sS -o /dev/null -w '%{http_connect}' https://other.test/; echo \" rc=$?\"")
    assert run.returncode == 0, run.stderr
    # curl reports the proxy's CONNECT refusal as a failed tunnel (exit 56) with code 403.
    assert run.stdout.strip() == "403 rc=56", run.stdout
    assert len(upstream.connects()) == before
    (line,) = [r for r in run.log() if r.get("host") == "other.test"]
    assert (line["decision"], line["status"]) == ("block", 403)


def test_agent_sends_placeholder_and_upstream_receives_the_real_token(manifest, run_bottle, upstream):
    rules = AGENT_RULES + """
  routes:
    - host: api.anthropic.com
      auth: {scheme: header, header: x-api-key, token_ref: BOTTLE_TEST_API_KEY}
"""
    script = (
        'echo "placeholder=$BOTTLE_TEST_API_KEY"; '
        + curl("https://api.anthropic.com/", "-H", "x-api-key: $BOTTLE_TEST_API_KEY").replace(
            "'x-api-key: $BOTTLE_TEST_API_KEY'", '"x-api-key: $BOTTLE_TEST_API_KEY"')
        + f"; echo env-hits=$(env | grep -c {REAL_TOKEN}); "
        f"echo proc-hits=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {REAL_TOKEN}); "
        f"echo fs-hits=$(grep -rls {REAL_TOKEN} /etc /home /tmp /workspace /usr/local/share 2>/dev/null | wc -l)"
    )
    run = run_bottle(manifest(rules), "sh", "-c", script, env={"BOTTLE_TEST_API_KEY": REAL_TOKEN})
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    placeholder = out[0].removeprefix("placeholder=")
    assert placeholder.startswith("bottle-placeholder-") and REAL_TOKEN not in placeholder
    assert out[1] == "200"
    received = [r for r in upstream.requests() if r["path"] == "/" and r["headers"].get("x-api-key")]
    assert received[-1]["headers"]["x-api-key"] == REAL_TOKEN
    assert out[-3:] == ["env-hits=0", "proc-hits=0", "fs-hits=0"]
    (line,) = [r for r in run.requests() if r["path"] == "/"]
    assert line["token_ref"] == "BOTTLE_TEST_API_KEY"
    log_text = run.log_path.read_text()
    assert REAL_TOKEN not in log_text and placeholder not in log_text
    assert REAL_TOKEN not in run.stderr + run.stdout


ISOLATION_PROBE = r"""
import json, os, socket, struct, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
go = json.load(open("/workspace/go"))
up_ip, scanner_ip = go["upstream"], go["scanner"]
out = {}

def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

def http(host, port):
    # Plain HTTP to an address: with transparent capture the proxy answers (and refuses the
    # IP literal); otherwise there is no route at all.
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.split(b"\r\n", 1)[0].decode() + (" (bottle)" if b"x-bottle-decision: block" in data.lower() else "")
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

out["direct_tcp_upstream"] = http(up_ip, 443)
out["direct_tcp_scanner"] = tcp(scanner_ip, 9090)
try:
    socket.getaddrinfo("pipelock", 9090); out["scanner_name"] = "resolved"
except OSError as e:
    out["scanner_name"] = type(e).__name__

def dns(name, qtype):
    resolver = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    start = time.monotonic()
    s.sendto(q, (resolver, 53))
    try:
        data = s.recv(4096)
        return {"rcode": data[3] & 0xF, "answers": struct.unpack(">H", data[6:8])[0],
                "seconds": round(time.monotonic() - start, 3)}
    except OSError as e:
        return {"error": type(e).__name__, "seconds": round(time.monotonic() - start, 3)}

out["dns"] = {t: dns("exfil-test.example.com", code) for t, code in (("A", 1), ("AAAA", 28), ("TXT", 16), ("MX", 15))}
start = time.monotonic()
try:
    socket.getaddrinfo("www.example.org", 443); out["getaddrinfo"] = "resolved"
except OSError as e:
    out["getaddrinfo"] = type(e).__name__
out["getaddrinfo_seconds"] = round(time.monotonic() - start, 3)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"udp-escape-probe", (up_ip, 5353)); out["udp_send"] = "sent"
except OSError as e:
    out["udp_send"] = type(e).__name__

def host(address):
    # Every address of the host, IPv6 link-local ones through the agent's own interface.
    target = address + "%eth0" if address.startswith("fe80:") else address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sockaddr = socket.getaddrinfo(target, go["port"], family, socket.SOCK_STREAM)[0][4]
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            try:
                u.sendto(b"host-escape-probe", sockaddr)
            except OSError:
                pass
        with socket.socket(family) as s:
            s.settimeout(2)
            s.connect(sockaddr)
            return "connected"
    except OSError as e:
        return type(e).__name__

with ThreadPoolExecutor(16) as pool:
    out["host"] = dict(zip(go["host"], pool.map(host, go["host"])))
out["ipv6_addresses"] = [l.split()[-1] for l in open("/proc/net/if_inet6")] if os.path.exists("/proc/net/if_inet6") else []
out["ca_key_files"] = [p for p in ("/run/bottle/mitmproxy/mitmproxy-ca.pem",) if os.path.exists(p)]
out["private_keys_in_trust_store"] = sum(
    b"PRIVATE KEY" in open(os.path.join(d, f), "rb").read()
    for d in ("/usr/local/share/ca-certificates", "/etc/ssl/certs")
    for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
out["uid"] = os.getuid()
out["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(out))
"""


def start_in_background(engine: Engine, manifest_path: Path, command: list[str], tmp_path: Path,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp_path / "bg.jsonl"), str(manifest_path),
            "--", *command]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=bottle_env({**engine.env, **(env or {})}), stdin=subprocess.DEVNULL, cwd=tmp_path)


def send_go(workspace: Path, go: dict) -> None:
    """Hand the waiting agent its instructions (it starts reading once the file appears whole)."""
    (workspace / "go.tmp").write_text(json.dumps(go))
    (workspace / "go.tmp").rename(workspace / "go")


def wait_for_go(workspace: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not (workspace / "ready").exists():
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.1)


def bottle_containers(engine: Engine, bottle_id: str) -> dict[str, str]:
    """role -> container name (the role is the name's last part)."""
    out = engine("ps", "--filter", f"label=dev.bottle.bottle={bottle_id}", "--format", "{{.Names}}").stdout.decode()
    return {name.removeprefix(f"{bottle_id}-"): name for name in out.split()}


UDP_LISTENER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 5353))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(4096)\n"
    "    open('/tmp/udp.log', 'a').write(f'{peer[0]} {data.decode(errors=\"replace\")}\\n')\n"
)


def start_udp_listener(upstream):
    """A UDP listener in the upstream container, proven to work by a packet from the host;
    returns a function that reads what it received."""
    engine = upstream.engine
    engine("exec", "-d", upstream.container, "python3", "-c", UDP_LISTENER)
    deadline = time.monotonic() + 10
    read = lambda: engine("exec", upstream.container, "sh", "-c", "cat /tmp/udp.log 2>/dev/null || true").stdout.decode()
    while "host-control" not in read():
        assert time.monotonic() < deadline, "the UDP listener never received the host's control packet"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"host-control", (upstream.ip, 5353))
        time.sleep(0.2)
    return read


class HostListener:
    """TCP and UDP on one port of every host address (IPv4 and IPv6): what reaches the host."""

    def __init__(self) -> None:
        self.tcp = socket.socket(socket.AF_INET6)
        self.tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.tcp.bind(("::", 0))
        self.tcp.listen()
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.udp.bind(("::", self.port))
        self.seen: list[str] = []
        for target in (self._accept, self._receive):
            threading.Thread(target=target, daemon=True).start()

    def _accept(self) -> None:
        with self.tcp:
            while True:
                conn, peer = self.tcp.accept()
                self.seen.append(f"tcp from {peer[0]}")
                conn.close()

    def _receive(self) -> None:
        with self.udp:
            while True:
                data, peer = self.udp.recvfrom(4096)
                self.seen.append(f"udp from {peer[0]}: {data.decode(errors='replace')}")


def host_addresses() -> list[str]:
    """Every non-loopback address of the host, from the kernel (no tools needed)."""
    found = set()
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    for previous, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL":
            found.add(previous.split()[-1])
    for line in Path("/proc/net/if_inet6").read_text().splitlines():
        raw = line.split()[0]
        found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return sorted(a for a in found if not a.startswith("127.") and a != "::1")


def with_capture(rules: str, capture: str) -> str:
    return rules.replace("egress:\n", f"egress:\n  capture: {capture}\n", 1)


@pytest.mark.parametrize("capture", ["proxy", "transparent"])
def test_no_way_around_the_proxy(manifest, tmp_path, upstream, engine, capture):
    """Direct TCP, UDP, DNS of any type, the host on any address (IPv4 or IPv6), the
    scanner and the CA key are all out of the agent's reach, in both capture modes (with
    transparent capture a connection to port 443 of any address reaches only the proxy)."""
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o777)
    workspace.chmod(0o777)
    (workspace / "probe.py").write_text(ISOLATION_PROBE)
    path = manifest(with_capture(AGENT_RULES, capture) + "agent:\n  workspace: ws\n")
    connects_before = len(upstream.connects())
    script = ("touch /workspace/ready; while [ ! -f /workspace/go ]; do sleep 0.1; done; "
              "python3 /workspace/probe.py")
    udp_log = start_udp_listener(upstream)
    listener = HostListener()
    addresses = host_addresses()
    # The listener answers on the host's own addresses, IPv4 and IPv6 alike.
    controls = [a for a in addresses if not a.startswith("fe80:")]
    for address in controls:
        socket.create_connection((address, listener.port), timeout=2).close()
    deadline = time.monotonic() + 5
    while len(listener.seen) < len(controls) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(listener.seen) == len(controls) and all(s.startswith("tcp from") for s in listener.seen), listener.seen
    listener.seen.clear()
    process = start_in_background(engine, path, ["sh", "-c", script], tmp_path)
    try:
        wait_for_go(workspace)
        bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
        scanner = bottle_containers(engine, bottle_id)["pipelock"]
        scanner_net = json.loads(engine("inspect", "--format", "{{json .NetworkSettings.Networks}}", scanner).stdout)
        scanner_ip = next(iter(scanner_net.values()))["IPAddress"]
        send_go(workspace, {"upstream": upstream.ip, "scanner": scanner_ip, "host": addresses, "port": listener.port})
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["host"] and not [a for a, r in result["host"].items() if r == "connected"], result["host"]
    assert listener.seen == []  # neither TCP nor UDP reached the host, on any address
    assert result["ipv6_addresses"] == []
    if capture == "transparent":
        assert result["direct_tcp_upstream"] == "HTTP/1.1 403 Forbidden (bottle)"  # the proxy, refusing
    else:
        assert not result["direct_tcp_upstream"].startswith("HTTP"), result["direct_tcp_upstream"]
    assert len(upstream.connects()) == connects_before
    assert result["direct_tcp_scanner"] != "connected"
    assert result["scanner_name"] == "gaierror"
    for qtype, answer in result["dns"].items():
        assert answer.get("rcode") == 3 and answer["answers"] == 0, (qtype, answer)  # NXDOMAIN
        assert answer["seconds"] < 1, (qtype, answer)
    assert result["getaddrinfo"] == "gaierror" and result["getaddrinfo_seconds"] < 1
    assert result["ca_key_files"] == [] and result["private_keys_in_trust_store"] == 0
    assert result["uid"] == 1000 and int(result["cap_eff"], 16) == 0
    time.sleep(0.5)
    received = udp_log()
    assert "udp-escape-probe" not in received
    assert "host-control" in received  # the listener was working all along


def test_agent_failure_exit_code_is_returned_and_everything_is_removed(manifest, run_bottle):
    run = run_bottle(manifest(AGENT_RULES), "sh", "-c", "exit 7")
    assert run.returncode == 7
    assert "bottle: torn down" in run.stderr


def test_sigterm_mid_run_tears_everything_down(manifest, tmp_path, engine):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    process = start_in_background(engine, path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
    try:
        wait_for_go(workspace)
        bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert "SIGTERM received, tearing down" in stderr.decode()
    assert leftovers(bottle_id, engine) == []


def _stderr_lines_so_far(process: subprocess.Popen) -> list[str]:
    # The first stderr line names the bottle; it is written before anything is created.
    line = process.stderr.readline().decode()
    return [line]


def test_failure_while_starting_the_proxy_removes_everything(manifest, run_bottle, tmp_path):
    path = manifest(AGENT_RULES)
    # Looks like PEM to bottle, but the proxy cannot load it: its start fails.
    (tmp_path / "upstream-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    run = run_bottle(path, "true")
    assert run.returncode == 5, run.stderr
    assert "Error: the egress proxy" in run.stderr and "did not start serving" in run.stderr
    assert "Traceback" not in run.stderr


def running_sysctls(engine: Engine, container: str, keys) -> dict[str, str]:
    """The sysctls as the kernel has them in the container's network namespace (Podman's
    inspect does not report them)."""
    if not keys:
        return {}
    pid = engine("inspect", "--format", "{{.State.Pid}}", container).stdout.decode().strip()
    script = "; ".join(f"cat /proc/sys/{key.replace('.', '/')}" for key in keys)
    out = subprocess.run(["nsenter", "-t", pid, "-n", "sh", "-c", script], capture_output=True, check=True)
    return dict(zip(keys, out.stdout.decode().split()))


def capabilities(engine: Engine, container: str) -> dict[str, int]:
    """Effective, permitted and bounding capabilities of the container's first process."""
    pid = engine("inspect", "--format", "{{.State.Pid}}", container).stdout.decode().strip()
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in status) if k in ("CapEff", "CapPrm", "CapBnd")}


def bridge_ipv4(engine: Engine, network: str) -> str | None:
    """The IPv4 address the host has on a network's bridge, or None."""
    import fcntl
    import struct

    info = json.loads(engine("network", "inspect", network).stdout)[0]
    if engine.name == "podman":
        bridge = info["network_interface"]
    else:
        bridge = info["Options"].get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            answer = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", bridge.encode()))  # SIOCGIFADDR
        except OSError:
            assert Path(f"/sys/class/net/{bridge}").exists(), f"no bridge {bridge} on the host"
            return None
    return socket.inet_ntoa(answer[20:24])


def test_dry_run_json_matches_what_was_launched(manifest, tmp_path, engine):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    dry = subprocess.run([sys.executable, "-m", "bottle", "start", "--dry-run", "--format=json", str(path)],
                         capture_output=True, env=bottle_env(engine.env), check=True)
    planned = json.loads(dry.stdout)
    assert planned["bottle"]["engine"] == engine.name
    process = start_in_background(engine, path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
    try:
        wait_for_go(workspace)
        bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
        planned_id = planned["bottle"]["id"]

        def normalise(text: str) -> str:
            return text.replace(planned_id, bottle_id)

        for container in planned["containers"]:
            name = normalise(container["name"])
            assert [normalise(a) for a in container["create_argv"][:3]] == [engine.name, "create", "--name"]
            info = json.loads(engine("inspect", name).stdout)[0]
            config, host = info["Config"], info["HostConfig"]
            # Podman names local images localhost/NAME.
            assert config["Image"].removeprefix("localhost/") == container["image"]
            assert config["User"] == container["user"]
            assert container["cap_drop"] == ["ALL"]
            assert capabilities(engine, name) == {"CapPrm": 0, "CapEff": 0, "CapBnd": 0}
            assert host["SecurityOpt"] == container["security_opt"]
            assert host["ReadonlyRootfs"] == container["read_only"]
            assert running_sysctls(engine, name, list(container["sysctls"])) == container["sysctls"]
            assert host["PidsLimit"] == container["resources"]["pids"]
            assert ((host.get("RestartPolicy") or {}).get("Name") or "no") == container["restart"]
            assert sorted(info["NetworkSettings"]["Networks"]) == sorted(normalise(n) for n in container["networks"])
            labels = {k: v for k, v in config["Labels"].items() if k.startswith("dev.bottle.")}
            expected = {k: normalise(v) for k, v in container["labels"].items()}
            assert labels.pop("dev.bottle.owner").endswith(f":{process.pid}")
            expected.pop("dev.bottle.owner")
            assert labels == expected
            env = dict(item.split("=", 1) for item in config["Env"] if "=" in item)
            for key, value in container["env"].items():
                if "<" not in value:
                    assert env[key] == value, key
        for network in planned["networks"]:
            if network["created"]:
                name = normalise(network["name"])
                info = json.loads(engine("network", "inspect", name).stdout)[0]
                if engine.name == "podman":
                    assert (info["internal"], info["ipv6_enabled"], info["dns_enabled"]) == (
                        network["internal"], False, network["dns"])
                    assert (info.get("options") or {}) == network["options"]
                else:
                    assert (info["Internal"], info["EnableIPv6"]) == (network["internal"], False)
                    for k, v in network["options"].items():
                        assert info["Options"][k] == v
                if network["internal"]:
                    assert bridge_ipv4(engine, name) is None, f"the host has an address on {name}"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert leftovers(bottle_id, engine) == []


def test_cleanup_removes_what_a_killed_bottle_left(manifest, tmp_path, engine):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    process = start_in_background(engine, path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
    wait_for_go(workspace)
    bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
    process.kill()  # SIGKILL: no teardown runs
    process.wait()
    assert leftovers(bottle_id, engine), "SIGKILL should have left the bottle behind"
    result = subprocess.run([sys.executable, "-m", "bottle", "cleanup"], capture_output=True, env=bottle_env(engine.env))
    assert result.returncode == 0, result.stderr
    assert f"removing container {bottle_id}-agent" in result.stdout.decode()
    assert leftovers(bottle_id, engine) == []


def test_an_absolute_form_target_in_a_tunnel_reaches_no_other_host_and_no_credential(manifest, run_bottle, upstream):
    """Inside a tunnel to api.anthropic.com, `GET https://other.test/…` names another host: a
    server routing on the target would serve it the real key. bottle answers 421."""
    rules = AGENT_RULES + """
  routes:
    - host: api.anthropic.com
      auth: {scheme: header, header: x-api-key, token_ref: BOTTLE_TEST_API_KEY}
"""
    marker = f"absolute-{time.time_ns()}"
    script = ('curl -sS -o /tmp/body -w "%{http_code}" --request-target "https://other.test/' + marker + '" '
              '-H "x-api-key: $BOTTLE_TEST_API_KEY" https://api.anthropic.com/; echo; cat /tmp/body')
    run = run_bottle(manifest(rules), "sh", "-c", script, env={"BOTTLE_TEST_API_KEY": REAL_TOKEN})
    assert run.returncode == 0, run.stderr
    status, body = run.stdout.splitlines()[:2]
    assert status == "421"
    assert body.startswith("bottle: blocked: misdirected request: the request names other.test:443")
    assert not [r for r in upstream.requests() if marker in r["path"]]
    assert not [r for r in upstream.requests() if r["headers"].get("x-api-key") == REAL_TOKEN
                and r.get("time", 0) > time.time() - 60 and marker in json.dumps(r)]
    (line,) = [r for r in run.requests() if r["status"] == 421]
    assert (line["host"], line["decision"]) == ("other.test", "block")


# On Podman the scanner has no name at all (no DNS on internal networks): the isolation
# probe covers it there; on Docker its alias must not become a destination in discover mode.
@pytest.mark.parametrize("engine", ["docker"], indirect=True)
@pytest.mark.parametrize("capture", ["proxy", "transparent"])
def test_in_discover_mode_the_agent_still_cannot_reach_the_scanner(manifest, run_bottle, capture):
    rules = f"egress:\n  mode: discover\n  capture: {capture}\n  allow: []\n"
    script = ("curl -sS -o /dev/null -w '%{http_code}\\n' -X POST -d '{}' http://pipelock:9090/api/v1/scan; "
              "curl -sS -o /dev/null -w '%{http_connect}\\n' https://pipelock:9090/api/v1/scan; "
              # Without proxy settings: discover mode answers names it would only log, never the scanner's.
              "curl -sS --noproxy '*' -o /dev/null -w '%{http_code}\\n' http://pipelock:9090/api/v1/scan; true")
    run = run_bottle(manifest(rules), "sh", "-c", script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["403", "403", "000"]
    reasons = {line["reason"] for line in run.requests() if line["host"] == "pipelock"}
    assert reasons == {"the scanner is not a destination"}
    if capture == "transparent":
        assert {(line["decision"], line["reason"]) for line in run.log() if line.get("qname") == "pipelock."} == {
            ("block", "the scanner is not a destination")}


def test_a_passthrough_host_is_reached_without_decryption_and_logged_unscanned(manifest, run_bottle, upstream):
    rules = """
egress:
  allow:
    - host: upstream.test
      tls: passthrough
      private_upstream: true
"""
    # -k: the agent meets the upstream's own certificate, which only the test CA signed.
    run = run_bottle(manifest(rules), "sh", "-c",
                     "curl -sSkv https://upstream.test/ 2>&1 | grep -E '^\\*  issuer:|^hello from'")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["*  issuer: CN=bottle test upstream CA", "hello from upstream"]
    (line,) = run.requests()
    assert (line["method"], line["host"], line["decision"], line["rule"], line["scan"]) == (
        "CONNECT", "upstream.test", "allow", "egress.allow[0]", "none")


def test_bottle_logs_follows_a_running_bottle_and_stops_when_it_does(manifest, upstream, tmp_path, engine):
    log = tmp_path / "followed.jsonl"
    script = ("curl -sS -o /dev/null https://api.anthropic.com/first; touch /tmp/x; sleep 4; "
              "curl -sS -o /dev/null https://api.anthropic.com/second")
    start = subprocess.Popen([sys.executable, "-m", "bottle", "start", "--egress-log", str(log),
                              str(manifest(AGENT_RULES)), "--", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bottle_env(engine.env), cwd=tmp_path,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and b"/first" in log.read_bytes()):
            assert start.poll() is None and time.monotonic() < deadline, start.communicate()
            time.sleep(0.1)
        follow = subprocess.run([sys.executable, "-m", "bottle", "logs", "-f", "--format", "json", str(log)],
                                capture_output=True, text=True, env=bottle_env(engine.env), timeout=120)
        start.wait(timeout=60)
    finally:
        if start.poll() is None:
            start.kill()
    assert follow.returncode == 0, follow.stderr
    assert [json.loads(line)["path"] for line in follow.stdout.splitlines()] == ["/first", "/second"]
