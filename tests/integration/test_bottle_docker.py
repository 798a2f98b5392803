"""`bottle start` for real: pipelock, the egress proxy and the agent as containers on a real
engine, with a real HTTPS upstream container standing in for api.anthropic.com."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AGENT_RULES, bottle_env, docker, leftovers

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
up_ip, scanner_ip = sys.argv[1], sys.argv[2]
out = {}

def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

out["direct_tcp_upstream"] = tcp(up_ip, 443)
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
out["ca_key_files"] = [p for p in ("/run/bottle/mitmproxy/mitmproxy-ca.pem",) if os.path.exists(p)]
out["private_keys_in_trust_store"] = sum(
    b"PRIVATE KEY" in open(os.path.join(d, f), "rb").read()
    for d in ("/usr/local/share/ca-certificates", "/etc/ssl/certs")
    for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
out["uid"] = os.getuid()
out["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(out))
"""


def start_in_background(manifest_path: Path, command: list[str], tmp_path: Path, env=None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp_path / "bg.jsonl"), str(manifest_path),
            "--", *command]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bottle_env(env),
                            stdin=subprocess.DEVNULL, cwd=tmp_path)


def wait_for_go(workspace: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not (workspace / "ready").exists():
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.1)


def bottle_containers() -> dict[str, str]:
    out = docker("ps", "--filter", "label=dev.bottle.managed=true", "--format",
                 '{{.Label "dev.bottle.role"}} {{.Names}}').stdout.decode()
    return dict(line.split() for line in out.splitlines())


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
    import socket

    docker("exec", "-d", upstream.container, "python3", "-c", UDP_LISTENER)
    deadline = time.monotonic() + 10
    read = lambda: docker("exec", upstream.container, "sh", "-c", "cat /tmp/udp.log 2>/dev/null || true").stdout.decode()
    while "host-control" not in read():
        assert time.monotonic() < deadline, "the UDP listener never received the host's control packet"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"host-control", (upstream.ip, 5353))
        time.sleep(0.2)
    return read


def test_no_way_around_the_proxy(manifest, tmp_path, upstream):
    """Direct TCP, DNS of any type, the scanner and the CA key are all out of the agent's reach."""
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o777)
    workspace.chmod(0o777)
    (workspace / "probe.py").write_text(ISOLATION_PROBE)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    script = ("touch /workspace/ready; while [ ! -f /workspace/go ]; do sleep 0.1; done; "
              'python3 /workspace/probe.py $(cat /workspace/go)')
    udp_log = start_udp_listener(upstream)
    process = start_in_background(path, ["sh", "-c", script], tmp_path)
    try:
        wait_for_go(workspace)
        roles = bottle_containers()
        scanner = roles["pipelock"]
        scanner_net = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", scanner).stdout)
        scanner_ip = next(iter(scanner_net.values()))["IPAddress"]
        (workspace / "go").write_text(f"{upstream.ip} {scanner_ip}\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["direct_tcp_upstream"] != "connected"
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


def test_sigterm_mid_run_tears_everything_down(manifest, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    process = start_in_background(path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
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
    assert leftovers(bottle_id) == []


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


def test_dry_run_json_matches_what_was_launched(manifest, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    dry = subprocess.run([sys.executable, "-m", "bottle", "start", "--dry-run", "--format=json", str(path)],
                         capture_output=True, env=bottle_env(), check=True)
    planned = json.loads(dry.stdout)
    process = start_in_background(path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
    try:
        wait_for_go(workspace)
        bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
        planned_id = planned["bottle"]["id"]

        def normalise(text: str) -> str:
            return text.replace(planned_id, bottle_id)

        for container in planned["containers"]:
            name = normalise(container["name"])
            info = json.loads(docker("inspect", name).stdout)[0]
            config, host = info["Config"], info["HostConfig"]
            assert config["Image"] == container["image"]
            assert config["User"] == container["user"]
            assert host["CapDrop"] == container["cap_drop"]
            assert host["SecurityOpt"] == container["security_opt"]
            assert host["ReadonlyRootfs"] == container["read_only"]
            assert (host.get("Sysctls") or {}) == container["sysctls"]
            assert host["PidsLimit"] == container["resources"]["pids"]
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
                info = json.loads(docker("network", "inspect", normalise(network["name"])).stdout)[0]
                assert info["Internal"] == network["internal"]
                assert info["EnableIPv6"] is False
                for k, v in network["options"].items():
                    assert info["Options"][k] == v
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert leftovers(bottle_id) == []


def test_cleanup_removes_what_a_killed_bottle_left(manifest, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    path = manifest(AGENT_RULES + "agent:\n  workspace: ws\n")
    process = start_in_background(path, ["sh", "-c", "touch /workspace/ready; sleep 300"], tmp_path)
    wait_for_go(workspace)
    bottle_id = next(line.split()[-1] for line in _stderr_lines_so_far(process) if "starting" in line)
    process.kill()  # SIGKILL: no teardown runs
    process.wait()
    assert leftovers(bottle_id), "SIGKILL should have left the bottle behind"
    result = subprocess.run([sys.executable, "-m", "bottle", "cleanup"], capture_output=True, env=bottle_env())
    assert result.returncode == 0, result.stderr
    assert f"removing container {bottle_id}-agent" in result.stdout.decode()
    assert leftovers(bottle_id) == []


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


def test_in_discover_mode_the_agent_still_cannot_reach_the_scanner(manifest, run_bottle):
    rules = "egress:\n  mode: discover\n  allow: []\n"
    script = ("curl -sS -o /dev/null -w '%{http_code}\\n' -X POST -d '{}' http://pipelock:9090/api/v1/scan; "
              "curl -sS -o /dev/null -w '%{http_connect}\\n' https://pipelock:9090/api/v1/scan; true")
    run = run_bottle(manifest(rules), "sh", "-c", script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["403", "403"]
    reasons = {line["reason"] for line in run.requests() if line["host"] == "pipelock"}
    assert reasons == {"the scanner is not a destination"}


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


def test_bottle_logs_follows_a_running_bottle_and_stops_when_it_does(manifest, upstream, tmp_path):
    log = tmp_path / "followed.jsonl"
    script = ("curl -sS -o /dev/null https://api.anthropic.com/first; touch /tmp/x; sleep 4; "
              "curl -sS -o /dev/null https://api.anthropic.com/second")
    start = subprocess.Popen([sys.executable, "-m", "bottle", "start", "--egress-log", str(log),
                              str(manifest(AGENT_RULES)), "--", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bottle_env(), cwd=tmp_path,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and b"/first" in log.read_bytes()):
            assert start.poll() is None and time.monotonic() < deadline, start.communicate()
            time.sleep(0.1)
        follow = subprocess.run([sys.executable, "-m", "bottle", "logs", "-f", "--format", "json", str(log)],
                                capture_output=True, text=True, env=bottle_env(), timeout=120)
        start.wait(timeout=60)
    finally:
        if start.poll() is None:
            start.kill()
    assert follow.returncode == 0, follow.stderr
    assert [json.loads(line)["path"] for line in follow.stdout.splitlines()] == ["/first", "/second"]
