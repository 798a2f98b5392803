"""Transparent capture for real (docs/prds/0009-transparent-capture.md): clients inside a
bottle with every proxy setting removed reach the world only through the proxy and its
policy, on Docker and on rootful Podman.

The agent cannot undo the capture: it has no capability, the helper that installed the
capture is gone before its command starts, and its own attempts to change the route or the
rules are refused by the kernel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from bottle.plan import proxy_image
from tests.integration.conftest import AGENT_RULES, Engine, bottle_env, leftovers
from tests.integration.test_bottle_docker import (
    AWS_KEY,
    REAL_TOKEN,
    bottle_containers,
    send_go,
    start_in_background,
    start_udp_listener,
    wait_for_go,
)

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

TRANSPARENT_RULES = AGENT_RULES.replace("egress:\n", "egress:\n  capture: transparent\n", 1) + """
  routes:
    - host: api.anthropic.com
      auth: {scheme: header, header: x-api-key, token_ref: BOTTLE_TEST_API_KEY}
"""
CAPTURE_ADDRESS = "198.18.0.1"
TCP_PORT = 9999  # a port no rule names, with a listener in the upstream container

# Run as the agent's user with every proxy variable removed. Each step prints one JSON line.
PROBE = r"""
import json, os, socket, ssl, struct, subprocess, sys, time
go = json.load(open("/workspace/go"))
up_ip, marker = go["upstream"], go["marker"]
NO_PROXY = [k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]
bare = {k: v for k, v in os.environ.items() if k not in NO_PROXY}

def out(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)

def curl(*args, env=bare):
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/tmp/body", "-w", "%{http_code} %{remote_ip}",
                        "--max-time", "20", *args], capture_output=True, text=True, env=env)
    body = open("/tmp/body", errors="replace").read() if os.path.exists("/tmp/body") else ""
    os.path.exists("/tmp/body") and os.remove("/tmp/body")
    code, _, ip = r.stdout.partition(" ")
    return {"rc": r.returncode, "status": code, "ip": ip, "body": body[:300], "err": r.stderr.strip()[-200:]}

def python_client(path, headers=""):
    # socket + ssl, nothing else: no proxy support at all. SSL_CERT_FILE names the bundle.
    with socket.create_connection(("api.anthropic.com", 443), timeout=20) as raw:
        peer = raw.getpeername()[0]
        ctx = ssl.create_default_context()
        with ctx.wrap_socket(raw, server_hostname="api.anthropic.com") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: api.anthropic.com\r\n{headers}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return {"peer": peer, "status_line": data.split(b"\r\n", 1)[0].decode(),
                    "body": data.partition(b"\r\n\r\n")[2].decode(errors="replace")[:300]}

def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    start = time.monotonic()
    try:
        s.connect((host, port)); return {"result": "connected"}
    except OSError as e:
        return {"result": type(e).__name__, "seconds": round(time.monotonic() - start, 3)}
    finally:
        s.close()

def udp(host, port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"udp-escape-probe", (host, port)); return "sent"
    except OSError as e:
        return type(e).__name__

def netlink(protocol, msg_type, body):
    # One request with an acknowledgement; the kernel answers with an errno (0: done).
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    s.bind((0, 0))
    s.send(struct.pack("=IHHII", 16 + len(body), msg_type, 0x5, 1, 0) + body)
    data = s.recv(65536)
    return os.strerror(-struct.unpack("=i", data[16:20])[0]) if struct.unpack("=H", data[4:6])[0] == 2 else "?"

def change_attempts():
    route = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 0, 0, 1, 0)  # the default route
    name = b"bottle\0"
    table = struct.pack("=BBH", 1, 0, 0) + struct.pack("=HH", 4 + len(name), 1) + name + b"\0" * (-len(name) % 4)
    return {"delete_default_route": netlink(0, 25, route),   # NETLINK_ROUTE RTM_DELROUTE
            "add_route": netlink(0, 24, route),              # RTM_NEWROUTE
            "delete_nft_table": netlink(12, (10 << 8) | 2, table)}  # NETLINK_NETFILTER NFT_MSG_DELTABLE

def default_route():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None

out("curl", **curl(f"https://api.anthropic.com/curl-{marker}"))
out("python", **python_client(f"/python-{marker}", f"x-api-key: {os.environ['BOTTLE_TEST_API_KEY']}\r\n"))
out("secret", **curl("-X", "POST", "-H", "content-type: application/json", "--data",
                     json.dumps({"note": f"secret-{marker}", "aws_access_key_id": go["aws_key"]}),
                     "https://api.anthropic.com/echo"))
out("other_by_name", **curl(f"https://other.test/{marker}"))
out("other_forced", **curl("--resolve", f"other.test:443:{go['capture_address']}", f"https://other.test/{marker}"))
out("no_sni", **curl("-k", f"https://{up_ip}/nosni-{marker}"))
out("ip_host", **curl(f"http://{up_ip}/iphost-{marker}"))
proxied = dict(os.environ)
r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"https://api.anthropic.com/proxied-{marker}"],
                   capture_output=True, text=True, env=proxied)
out("proxy_aware", status=r.stdout, proxy=os.environ.get("HTTPS_PROXY"))
out("tcp_other_port", **tcp(up_ip, go["tcp_port"]))
out("udp", result=udp(up_ip, 5353))
out("default_route_before", via=default_route())
out("attempts", **change_attempts())
out("default_route_after", via=default_route())
out("tcp_other_port_after", **tcp(up_ip, go["tcp_port"]))
out("curl_after", **curl(f"https://api.anthropic.com/after-{marker}"))
out("caps", cap_eff=[l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0], uid=os.getuid())
"""

TCP_LISTENER = (
    "import socket\n"
    f"s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', {TCP_PORT}))\n"
    "s.listen()\n"
    "while True:\n"
    "    c, peer = s.accept(); open('/tmp/tcp.log', 'a').write(f'{peer[0]}\\n'); c.close()\n"
)


def start_tcp_listener(upstream) -> Callable[[], str]:
    """A TCP listener on a port no rule names, proven reachable from the host; returns a
    function that reads who connected."""
    engine = upstream.engine
    engine("exec", "-d", upstream.container, "python3", "-c", TCP_LISTENER)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((upstream.ip, TCP_PORT), 1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the TCP listener never accepted the host's connection"
            time.sleep(0.2)
    return lambda: engine("exec", upstream.container, "sh", "-c", "cat /tmp/tcp.log 2>/dev/null || true").stdout.decode()


def in_netns(engine: Engine, network: str, script: str, stdin: bytes | None = None) -> str:
    """A shell script run with the proxy image's nft and ip, as root with NET_ADMIN only, in
    `network` (`container:NAME` for a container's namespace, `none` for a fresh one)."""
    return engine("run", "--rm", "-i", "--network", network, "--user", "0:0", "--cap-drop", "ALL", "--cap-add",
                  "NET_ADMIN", "--entrypoint", "sh", proxy_image(os.environ), "-c", script,
                  input=stdin).stdout.decode()


def test_clients_without_proxy_settings_go_through_the_proxy_and_its_policy(manifest, tmp_path, upstream, engine):
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o777)
    workspace.chmod(0o777)
    (workspace / "probe.py").write_text(PROBE)
    path = manifest(TRANSPARENT_RULES + "agent:\n  workspace: ws\n")
    dry = json.loads(subprocess.run([sys.executable, "-m", "bottle", "start", "--dry-run", "--format=json",
                                     str(path)], capture_output=True, env=bottle_env(engine.env), check=True).stdout)
    assert dry["capture"]["mode"] == "transparent" and dry["capture"]["dns_address"] == CAPTURE_ADDRESS
    udp_log = start_udp_listener(upstream)
    tcp_log = start_tcp_listener(upstream)
    started = time.time()
    marker = f"t{time.time_ns() % 10**6}"  # short: the log redacts path segments that look like tokens
    script = "touch /workspace/ready; while [ ! -f /workspace/go ]; do sleep 0.1; done; python3 /workspace/probe.py"
    process = start_in_background(engine, path, ["sh", "-c", script], tmp_path,
                                  env={"BOTTLE_TEST_API_KEY": REAL_TOKEN})
    try:
        wait_for_go(workspace)
        bottle_id = process.stderr.readline().decode().split()[-1]
        containers = bottle_containers(engine, bottle_id)
        # The helper that installed the capture is gone before the agent command starts.
        assert sorted(containers) == ["agent", "pipelock", "proxy"], containers
        agent, proxy = containers["agent"], containers["proxy"]
        networks = json.loads(engine("inspect", "--format", "{{json .NetworkSettings.Networks}}", proxy).stdout)
        proxy_ip = networks[f"{bottle_id}-agent"]["IPAddress"]
        proxy_upstream_ip = networks[upstream.network]["IPAddress"]
        agent_ip = json.loads(engine("inspect", "--format", "{{json .NetworkSettings.Networks}}", agent).stdout)[
            f"{bottle_id}-agent"]["IPAddress"]
        # What is installed is what the dry-run showed (both listed by the same nft).
        planned = dry["capture"]["install"]["stdin"].replace("<proxy-ip>", proxy_ip)
        installed = in_netns(engine, f"container:{agent}", "nft list table inet bottle; ip route show default")
        rules, _, route = installed.rpartition("default via ")
        assert rules == in_netns(engine, "none", "nft -f - && nft list table inet bottle", stdin=planned.encode())
        assert route.split()[0] == proxy_ip
        send_go(workspace, {"upstream": upstream.ip, "marker": marker, "aws_key": AWS_KEY,
                            "capture_address": CAPTURE_ADDRESS, "tcp_port": TCP_PORT})
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    steps = {step["step"]: step for step in map(json.loads, filter(lambda l: l.startswith("{"),
                                                                   stdout.decode().splitlines()))}

    # Allowed host, curl without proxy settings: answered by the upstream (its 404 for any path
    # but /), through the proxy.
    assert (steps["curl"]["status"], steps["curl"]["body"], steps["curl"]["ip"]) == (
        "404", "not found\n", CAPTURE_ADDRESS), steps["curl"]
    # Python socket + ssl, with the placeholder: the upstream got the real credential.
    assert steps["python"]["status_line"] == "HTTP/1.1 404 Not Found" and steps["python"]["peer"] == CAPTURE_ADDRESS
    received = {r["path"]: r for r in upstream.requests() if marker in r["path"]}
    assert received[f"/python-{marker}"]["headers"]["x-api-key"] == REAL_TOKEN
    assert f"/curl-{marker}" in received and f"/proxied-{marker}" in received and f"/after-{marker}" in received
    # ... and every connection the upstream saw in this run came from the proxy, none from the agent.
    peers = {tuple(e["peer"])[0] for e in upstream.connects() if e["time"] > started}
    assert peers == {proxy_upstream_ip}, peers
    # A secret is blocked and never reaches upstream.
    assert steps["secret"]["status"] == "403" and "DLP-AWS Access ID" in steps["secret"]["body"]
    assert not [r for r in upstream.requests() if f"secret-{marker}" in r.get("body_text", "")]
    # A host no rule allows: no address for its name, and refused when dialled anyway.
    assert steps["other_by_name"]["rc"] == 6, steps["other_by_name"]  # curl: could not resolve host
    assert steps["other_forced"]["status"] == "403", steps["other_forced"]
    assert steps["other_forced"]["body"] == "bottle: blocked: no rule allows host other.test\n"
    assert steps["no_sni"]["status"] == "421" and "must name its host in the TLS SNI" in steps["no_sni"]["body"]
    assert steps["ip_host"]["status"] == "403" and "IP literal destination" in steps["ip_host"]["body"]
    assert not [path for path in upstream.requests() if "other" in path["path"] or "nosni" in path["path"]
                or "iphost" in path["path"]]
    # Proxy-aware clients in the same bottle keep working.
    assert steps["proxy_aware"]["status"] == "404" and steps["proxy_aware"]["proxy"] == f"http://{proxy_ip}:8080"
    # Raw TCP to another port and UDP go nowhere: refused at once.
    assert steps["tcp_other_port"]["result"] == "ConnectionRefusedError" and steps["tcp_other_port"]["seconds"] < 1
    assert steps["udp"]["result"] == "PermissionError"
    time.sleep(0.5)
    assert agent_ip not in tcp_log() and "udp-escape-probe" not in udp_log()
    # The agent cannot change the route or the rules, and the capture still holds after it tried.
    assert steps["attempts"] == {"step": "attempts", "delete_default_route": "Operation not permitted",
                                 "add_route": "Operation not permitted",
                                 "delete_nft_table": "Operation not permitted"}
    assert steps["default_route_before"]["via"] == steps["default_route_after"]["via"] == proxy_ip
    assert steps["tcp_other_port_after"]["result"] == "ConnectionRefusedError"
    assert steps["curl_after"]["status"] == "404"
    assert (steps["caps"]["uid"], int(steps["caps"]["cap_eff"], 16)) == (1000, 0)

    log = [json.loads(line) for line in (tmp_path / "bg.jsonl").read_text().splitlines()]
    allowed = [l for l in log if l.get("path") == f"/curl-{marker}"]
    assert [(l["client"], l["host"], l["port"], l["decision"]) for l in allowed] == [
        (agent_ip, "api.anthropic.com", 443, "allow")]
    (python_line,) = [l for l in log if l.get("path") == f"/python-{marker}"]
    assert python_line["token_ref"] == "BOTTLE_TEST_API_KEY"
    dns = {(l["qname"], l["decision"]) for l in log if "qname" in l}
    assert ("api.anthropic.com.", "allow") in dns and ("other.test.", "block") in dns
    drops = {(l["protocol"], l["address"], l["port"]) for l in log if l.get("event") == "capture_drop"}
    assert {("tcp", upstream.ip, TCP_PORT), ("udp", upstream.ip, 5353)} <= drops, drops
    assert REAL_TOKEN not in (tmp_path / "bg.jsonl").read_text()
    assert leftovers(bottle_id, engine) == []
