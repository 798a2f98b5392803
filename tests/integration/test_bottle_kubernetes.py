"""`bottle start --backend kubernetes` for real, on a real single-node cluster built on this
machine (scripts/lib/k8s.sh): a kubelet running Pods in a second containerd, kube-router
enforcing NetworkPolicy, an HTTPS upstream Pod standing in for api.anthropic.com, and
every bottle in a namespace whose admission enforces the `restricted` Pod Security
Standard. The node starts with this module and is torn down after it."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from bottle.plan import proxy_image
from tests.integration.conftest import AGENT_RULES, UPSTREAM_ALIASES, UPSTREAM_IMAGE, bottle_env
from tests.support.certs import make_upstream_pki
from tests.support.k8s import KUBECONFIG, KUBELET_PORT, NODE_IP, Api, Background, node_binaries_missing, node_script, router_alive
from tests.support.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes, pytest.mark.needs_pipelock]

AGENT_IMAGE = "bottle/agent:0.1.0"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
REAL_TOKEN = "bottle-test-real-token-5c0ffee5k8s"
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.fixture(scope="module")
def node(docker_engine, pipelock_image) -> Api:
    if os.geteuid() != 0:
        missing("the test node needs root: it runs a kubelet, a containerd and kube-router")
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        missing("the kubernetes Python package is not installed (pip install -e '.[test]')")
    if reason := node_binaries_missing():
        missing(reason)
    node_script("up", timeout=3600)  # waits for a background build of the binaries, if one runs
    try:
        node_script("import", AGENT_IMAGE, proxy_image(os.environ), pipelock_image, UPSTREAM_IMAGE)
        yield Api(KUBECONFIG)
    finally:
        node_script("down")


@pytest.fixture(scope="module")
def namespace(node):
    name = f"bottle-it-{uuid.uuid4().hex[:6]}"
    node.core.create_namespace({"metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    # Pods are admitted only once the namespace's default ServiceAccount exists.
    deadline = time.monotonic() + 60
    while not node.core.list_namespaced_service_account(name).items:
        assert time.monotonic() < deadline, "no default ServiceAccount appeared"
        time.sleep(0.2)
    yield name
    left = [f"{kind} {obj['metadata']['name']}" for kind, obj in node.labelled(name, "dev.bottle.managed=true")]
    node.core.delete_namespace(name)
    assert left == [], "bottles left objects behind"


def restricted_pod(name: str, image: str, *, args: list[str], user: int = 1000, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": user,
                                "seccompProfile": {"type": "RuntimeDefault"}, **spec.pop("security", {})},
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "args": args,
                            "securityContext": copy.deepcopy(RESTRICTED), **spec.pop("container", {})}],
            **spec,
        },
    }


class Upstream:
    """The HTTPS upstream Pod; its log is what the internet saw."""

    def __init__(self, api: Api, namespace: str, ip: str, ca: Path) -> None:
        self.api, self.namespace, self.ip, self.ca = api, namespace, ip, ca

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.api.log(self.namespace, "upstream").splitlines()
                if line.startswith("{")]

    def requests(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "request"]


@pytest.fixture(scope="module")
def upstream(node, namespace, tmp_path_factory) -> Upstream:
    pki = make_upstream_pki(tmp_path_factory.mktemp("k8s-pki"), list(UPSTREAM_ALIASES))
    node.core.create_namespaced_secret(namespace, {"metadata": {"name": "upstream-tls"}, "stringData": {
        "server.pem": pki["cert"].read_text(), "server.key": pki["key"].read_text()}})
    pod = restricted_pod(
        "upstream", UPSTREAM_IMAGE, user=10002,
        args=["--host", "0.0.0.0", "--port", "443", "--cert", "/certs/server.pem", "--key", "/certs/server.key",
              "--name", "upstream"],
        # Port 443 without a capability.
        security={"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
        container={"volumeMounts": [{"name": "tls", "mountPath": "/certs", "readOnly": True}]},
        volumes=[{"name": "tls", "secret": {"secretName": "upstream-tls", "defaultMode": 0o444}}],
    )
    node.core.create_namespaced_pod(namespace, pod)
    ip = node.wait_pod(namespace, "upstream", lambda p: p.get("status", {}).get("podIP"))["status"]["podIP"]
    server = Upstream(node, namespace, ip, pki["ca"])
    deadline = time.monotonic() + 60
    while not any(e.get("event") == "listening" for e in server.events()):
        assert time.monotonic() < deadline, "the upstream Pod never started listening"
        time.sleep(0.2)
    return server


@pytest.fixture
def manifest(tmp_path, pipelock_image, namespace, upstream):
    def write(body: str, *, name: str = "k8s", agent_image: str | None = None) -> Path:
        (tmp_path / "upstream-ca.pem").write_bytes(upstream.ca.read_bytes())
        agent = f"agent:\n  image: {agent_image}\n" if agent_image else ""
        path = tmp_path / "bottle.yaml"
        path.write_text(
            f"version: 1\nname: {name}\nbackend: kubernetes\n{textwrap.dedent(body).strip()}\n{agent}"
            f"scanner:\n  image: {pipelock_image}\n"
            f"kubernetes:\n  namespace: {namespace}\n  proxy_host_aliases:\n"
            f"    - ip: {upstream.ip}\n      hostnames: [{', '.join(UPSTREAM_ALIASES)}]\n"
        )
        return path

    return write


def k8s_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return bottle_env({"KUBECONFIG": str(KUBECONFIG), **(extra or {})})


def start(manifest_path: Path, command: list[str], tmp_path: Path, env=None) -> Background:
    argv = [sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp_path / "egress.jsonl"),
            str(manifest_path), "--", *command]
    return Background(argv, k8s_env(env), tmp_path)


def curl(url: str, *args: str) -> str:
    quoted = " ".join(f"'{a}'" for a in args)
    return f"curl -sS -o /tmp/body -w '%{{http_code}}' {quoted} {url}; echo; cat /tmp/body; echo"


# -- a real bottle ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(node, namespace, upstream, pipelock_image, tmp_path_factory):
    """One bottle whose agent makes a clean request, sends a secret in a body, uses a
    credential route and reports what it holds; then exits 3."""
    tmp = tmp_path_factory.mktemp("k8s-run")
    (tmp / "upstream-ca.pem").write_bytes(upstream.ca.read_bytes())
    marker = f"marker-{time.time_ns()}"
    (tmp / "bottle.yaml").write_text(
        f"version: 1\nname: k8s-real\n{AGENT_RULES.strip()}\n"
        "  routes:\n    - host: api.anthropic.com\n      paths: [/headers]\n"
        "      auth: {scheme: header, header: x-api-key, token_ref: BOTTLE_TEST_API_KEY}\n"
        f"scanner:\n  image: {pipelock_image}\n"
        f"kubernetes:\n  namespace: {namespace}\n  proxy_host_aliases:\n"
        f"    - ip: {upstream.ip}\n      hostnames: [{', '.join(UPSTREAM_ALIASES)}]\n")
    body = json.dumps({"note": marker, "aws_access_key_id": AWS_KEY})
    script = "; ".join([
        "echo '== clean'", curl("https://api.anthropic.com/"),
        "echo '== secret'", curl("https://api.anthropic.com/echo", "-X", "POST", "-H", "content-type: application/json",
                                 "--data", body),
        "echo '== credential'", 'echo "placeholder=$BOTTLE_TEST_API_KEY"',
        curl("https://api.anthropic.com/headers").replace("-w '%{http_code}' ",
                                                          "-w '%{http_code}' -H \"x-api-key: $BOTTLE_TEST_API_KEY\" "),
        f"echo env-hits=$(env | grep -c {REAL_TOKEN})",
        f"echo proc-hits=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {REAL_TOKEN})",
        f"echo fs-hits=$(grep -rls {REAL_TOKEN} /etc /home /tmp /workspace /usr/local/share 2>/dev/null | wc -l)",
        "exit 3",
    ])
    log = tmp / "egress.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bottle", "start", "--egress-log", str(log), str(tmp / "bottle.yaml"),
         "--backend", "kubernetes", "--", "sh", "-c", script],
        capture_output=True, env=k8s_env({"BOTTLE_TEST_API_KEY": REAL_TOKEN}), timeout=300, stdin=subprocess.DEVNULL,
        cwd=tmp)
    stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    sections = dict(re.findall(r"== (\w+)\n(.*?)(?=\n== |\Z)", stdout, re.S))
    return {"returncode": result.returncode, "stdout": stdout, "stderr": stderr, "sections": sections,
            "log": log, "marker": marker, "bottle_id": re.search(r"bottle: starting (\S+)", stderr).group(1)}


def requests_logged(run) -> list[dict]:
    return [json.loads(line) for line in run["log"].read_text().splitlines() if '"method"' in line]


def test_a_clean_https_request_is_answered_by_the_upstream_pod(real_run):
    assert real_run["returncode"] == 3, real_run["stderr"]
    assert real_run["sections"]["clean"].splitlines()[:2] == ["200", "hello from upstream"]
    assert "bottle: mitm ca fingerprint: sha256:" in real_run["stderr"]
    (line,) = [r for r in requests_logged(real_run) if r["path"] == "/"]
    assert (line["decision"], line["status"], line["host"], line["scheme"]) == ("allow", 200, "api.anthropic.com", "https")


def test_a_secret_in_a_body_is_blocked_before_the_upstream_sees_it(real_run, upstream):
    status, message = real_run["sections"]["secret"].splitlines()[:2]
    assert status == "403" and "DLP-AWS Access ID" in message and AWS_KEY not in message
    assert not [r for r in upstream.requests() if real_run["marker"] in r.get("body_text", "")]
    (line,) = [r for r in requests_logged(real_run) if r["path"] == "/echo"]
    assert line["decision"] == "block" and line["scanner"] == ["DLP-AWS Access ID"]
    assert AWS_KEY not in real_run["log"].read_text()


def test_a_credential_route_injects_the_real_key_the_agent_never_holds(real_run, upstream):
    out = real_run["sections"]["credential"].splitlines()
    placeholder = out[0].removeprefix("placeholder=")
    assert placeholder.startswith("bottle-placeholder-") and REAL_TOKEN not in placeholder
    assert out[1] == "200"
    received = [r for r in upstream.requests() if r["path"] == "/headers" and r["headers"].get("x-api-key")]
    assert received[-1]["headers"]["x-api-key"] == REAL_TOKEN
    assert out[-3:] == ["env-hits=0", "proc-hits=0", "fs-hits=0"]
    (line,) = [r for r in requests_logged(real_run) if r["path"] == "/headers"]
    assert line["token_ref"] == "BOTTLE_TEST_API_KEY"
    assert REAL_TOKEN not in real_run["log"].read_text() + real_run["stderr"]


def test_the_agents_exit_code_is_bottles_and_nothing_is_left(real_run, node, namespace):
    assert real_run["returncode"] == 3
    assert "bottle: torn down" in real_run["stderr"]
    assert node.leftovers(namespace, real_run["bottle_id"]) == []


# -- isolation --------------------------------------------------------------------------

PROBE = r"""
import json, os, socket, struct, sys, time, urllib.parse
proxy = urllib.parse.urlsplit(os.environ.get("HTTPS_PROXY", "http://0.0.0.0:1")).hostname
out = {"tcp": {}}

def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    out["tcp"][target] = tcp(proxy if host == "PROXY" else host, int(port))
servers = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
if servers:
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in "exfil-test.example.com".split(".")) + b"\0" + struct.pack(">HH", 16, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (servers[0], 53))
    try:
        data = s.recv(4096); out["dns_txt"] = {"server": servers[0], "rcode": data[3] & 0xF}
    except OSError as e:
        out["dns_txt"] = {"server": servers[0], "error": type(e).__name__}
out["service_account_token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
out["private_keys_in_trust_store"] = sum(
    b"PRIVATE KEY" in open(os.path.join(d, f), "rb").read()
    for d in ("/usr/local/share/ca-certificates", "/etc/ssl/certs")
    for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
out["uid"] = os.getuid()
out["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def node_listener():
    """A TCP listener of this test on the node's own address; records who connected."""
    server = socket.create_server((NODE_IP, 0))
    server.settimeout(0.5)
    peers: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except OSError:
                continue
            peers.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], peers
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_isolation_is_enforced_not_just_declared(node, namespace, upstream, manifest, tmp_path, node_listener):
    """From the agent Pod, direct TCP to the upstream Pod, to pipelock, to the node and to the
    kubelet fails; the same probes from a control Pod without the policy succeed."""
    port, peers = node_listener
    targets = [f"{upstream.ip}:443", f"{NODE_IP}:{port}", f"{NODE_IP}:{KUBELET_PORT}"]
    assert router_alive(), "kube-router is not running: no NetworkPolicy would be enforced"

    control = f"control-{uuid.uuid4().hex[:6]}"
    node.core.create_namespaced_pod(namespace, restricted_pod(control, AGENT_IMAGE, args=[],
                                                             container={"command": ["python3", "-c", PROBE, *targets]}))
    node.wait_pod(namespace, control, lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"))
    controlled = json.loads(node.log(namespace, control).strip().splitlines()[-1])
    assert controlled["tcp"] == {target: "connected" for target in targets}, controlled
    control_ip = node.pod(namespace, control)["status"]["podIP"]
    assert control_ip in peers  # the node listener was reachable all along

    path = manifest(AGENT_RULES)
    bottle = start(path, ["sh", "-c", 'python3 -c "$0" "$@"; exec sleep 600', PROBE, *targets,
                          "PROXY:9090", "PROXY:8080"], tmp_path)
    try:
        probed = json.loads(bottle.wait_for("the probe's result", '{"tcp"', stream="stdout"))
        bottle_id = bottle.bottle_id
        proxy_pod = f"{bottle_id}-proxy"
        # pipelock serves the proxy on the proxy Pod's loopback; only that Pod can reach it.
        scanner_from_proxy = node.exec(namespace, proxy_pod, "proxy", [
            "/opt/bottle-proxy/bin/python", "-c",
            "import socket; socket.create_connection(('127.0.0.1', 9090), 3); print('connected')"]).strip()
        agent_ip = node.pod(namespace, f"{bottle_id}-agent")["status"]["podIP"]
        bottle.process.send_signal(signal.SIGTERM)
        code = bottle.finish()
    finally:
        if bottle.process.poll() is None:
            bottle.process.kill()
    assert probed["tcp"]["PROXY:8080"] == "connected", probed  # the one way out
    blocked = {target: result for target, result in probed["tcp"].items() if target != "PROXY:8080"}
    assert sorted(blocked) == sorted([*targets, "PROXY:9090"])
    assert "connected" not in blocked.values(), probed
    assert agent_ip not in peers
    assert scanner_from_proxy == "connected"
    assert probed["dns_txt"]["rcode"] == 3, probed  # NXDOMAIN from the proxy, the only nameserver
    assert probed["service_account_token"] is False
    assert probed["private_keys_in_trust_store"] == 0
    assert probed["uid"] == 1000 and int(probed["cap_eff"], 16) == 0
    assert code == 128 + signal.SIGTERM, "".join(bottle.stderr)
    assert node.leftovers(namespace, bottle_id) == []
    assert router_alive(), "kube-router stopped during the test"


# -- admission ----------------------------------------------------------------------------

def test_the_namespace_really_enforces_the_restricted_standard(node, namespace):
    """Every bottle in this module is created here, so admission checked all of its objects;
    this shows the admission would refuse a Pod that breaks the standard."""
    from kubernetes.client.exceptions import ApiException

    labels = node.core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = restricted_pod("not-restricted", AGENT_IMAGE, args=["true"])
    del pod["spec"]["containers"][0]["securityContext"]["capabilities"]
    with pytest.raises(ApiException) as refused:
        node.core.create_namespaced_pod(namespace, pod)
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        'pods "not-restricted" is forbidden: violates PodSecurity "restricted:latest": unrestricted capabilities '
        '(container "main" must set securityContext.capabilities.drop=["ALL"])')


# -- what is created ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(node, namespace, upstream, pipelock_image, tmp_path_factory):
    """A bottle that idles after starting, with its dry-run JSON made just before."""
    tmp = tmp_path_factory.mktemp("k8s-launched")
    (tmp / "upstream-ca.pem").write_bytes(upstream.ca.read_bytes())
    path = tmp / "bottle.yaml"
    path.write_text(
        f"version: 1\nname: k8s-objects\nbackend: kubernetes\n{AGENT_RULES.strip()}\n"
        "  routes:\n    - host: api.anthropic.com\n"
        "      auth: {scheme: bearer, token_ref: BOTTLE_TEST_API_KEY}\n"
        f"scanner:\n  image: {pipelock_image}\nkubernetes:\n  namespace: {namespace}\n")
    env = k8s_env({"BOTTLE_TEST_API_KEY": REAL_TOKEN})
    dry = subprocess.run([sys.executable, "-m", "bottle", "start", "--dry-run", "--format=json", str(path)],
                         capture_output=True, env=env, check=True)
    bottle = Background([sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp / "egress.jsonl"), str(path),
                         "--", "sleep", "600"], env, tmp)
    try:
        bottle.wait_for("the bottle to be up", "bottle: egress log:")
        yield {"planned": json.loads(dry.stdout), "bottle": bottle, "bottle_id": bottle.bottle_id}
    finally:
        if bottle.process.poll() is None:  # a test failed before the one that stops it
            bottle.process.send_signal(signal.SIGTERM)
            bottle.finish()


def created_objects(node, namespace, bottle_id) -> dict[tuple[str, str], dict]:
    """Each labelled object as the API server returns it on its own (lists leave out kind)."""
    return {(kind, obj["metadata"]["name"]): node.read(namespace, kind, obj["metadata"]["name"])
            for kind, obj in node.labelled(namespace, f"dev.bottle.bottle={bottle_id}")}


def assert_sent(planned, created, where: str, markers: dict[str, str]) -> None:
    """Every field the dry-run planned is in the created object with that value (the API
    server adds defaults and status, which the plan does not name)."""
    if isinstance(planned, dict):
        assert isinstance(created, dict), where
        for key, value in planned.items():
            assert key in created, f"{where}.{key} missing from the created object"
            assert_sent(value, created[key], f"{where}.{key}", markers)
    elif isinstance(planned, list):
        assert isinstance(created, list) and len(planned) == len(created), f"{where}: {planned} vs {created}"
        for i, (p, c) in enumerate(zip(planned, created)):
            assert_sent(p, c, f"{where}[{i}]", markers)
    elif isinstance(planned, str) and "<placeholder:" in planned:
        assert created.startswith("bottle-placeholder-"), f"{where}: {created!r}"
    elif isinstance(planned, str):
        for marker, value in markers.items():
            planned = planned.replace(marker, value)
        assert planned == created, f"{where}: planned {planned!r}, created {created!r}"
    else:
        assert planned == created, f"{where}: planned {planned!r}, created {created!r}"


def test_the_dry_run_json_is_what_was_created(launched, node, namespace):
    planned, bottle_id = launched["planned"], launched["bottle_id"]
    objects = created_objects(node, namespace, bottle_id)
    planned_id = planned["bottle"]["id"]
    parent = objects[("ConfigMap", bottle_id)]
    proxy = objects[("Pod", f"{bottle_id}-proxy")]
    markers = {planned_id: bottle_id, "<parent-uid>": parent["metadata"]["uid"],
               "<proxy-ip>": proxy["status"]["podIP"],
               "<host:pid>": f"{socket.gethostname()}:{launched['bottle'].process.pid}"}
    bodies = planned["kubernetes"]["objects"]
    assert sorted((b["kind"], b["metadata"]["name"].replace(planned_id, bottle_id)) for b in bodies) == sorted(objects)
    for body in bodies:
        made = objects[(body["kind"], body["metadata"]["name"].replace(planned_id, bottle_id))]
        body = dict(body)
        if body["kind"] == "Secret":
            # stringData is write-only: the server keeps it as base64 `data`.
            string_data = body.pop("stringData")
            assert sorted(made["data"]) == sorted(string_data)
        if body["kind"] == "ConfigMap" and "data" in body:
            assert sorted(made["data"]) == sorted(body.pop("data"))
        assert_sent(body, made, f"{body['kind']} {body['metadata']['name']}", markers)
    assert planned["kubernetes"]["namespace"] == namespace


def test_the_ca_key_and_the_credentials_are_only_in_the_proxys_secret(launched, node, namespace):
    bottle_id = launched["bottle_id"]
    objects = created_objects(node, namespace, bottle_id)
    proxy_secret = objects[("Secret", f"{bottle_id}-proxy")]
    credentials = objects[("Secret", f"{bottle_id}-credentials")]
    ca = base64.b64decode(proxy_secret["data"]["mitmproxy-ca.pem"])
    assert b"PRIVATE KEY" in ca
    key_line = ca.decode().splitlines()[1]
    assert base64.b64decode(credentials["data"]["BOTTLE_TEST_API_KEY"]).decode() == REAL_TOKEN
    for (kind, name), obj in objects.items():
        text = json.dumps(obj)
        if (kind, name) != ("Secret", f"{bottle_id}-proxy"):
            assert "PRIVATE KEY" not in text and key_line not in text, f"{kind} {name} holds the CA key"
            assert proxy_secret["data"]["mitmproxy-ca.pem"] not in text
        if (kind, name) != ("Secret", f"{bottle_id}-credentials"):
            assert REAL_TOKEN not in text and credentials["data"]["BOTTLE_TEST_API_KEY"] not in text, (kind, name)
    agent = objects[("Pod", f"{bottle_id}-agent")]["spec"]
    assert not [v for v in agent["volumes"] if "secret" in v or "projected" in v]
    for container in agent["containers"] + agent["initContainers"]:
        assert not [e for e in container.get("env", []) if "valueFrom" in e]
        assert not container.get("envFrom")
    proxy = objects[("Pod", f"{bottle_id}-proxy")]["spec"]
    (proxy_container,) = proxy["containers"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in proxy_container["env"]} == {
        "BOTTLE_TEST_API_KEY": f"{bottle_id}-credentials"}
    ca_volume = next(v for v in proxy["volumes"] if v["name"] == "ca")
    assert [m["name"] for m in proxy_container["volumeMounts"] if m["name"] == "ca"] == ["ca"]
    assert ca_volume["secret"]["items"] == [{"key": "mitmproxy-ca.pem", "path": "mitmproxy-ca.pem"}]
    (pipelock,) = proxy["initContainers"]
    assert [m["name"] for m in pipelock["volumeMounts"] if m["name"] == "ca"] == []


def test_sigterm_while_running_tears_everything_down(launched, node, namespace):
    bottle = launched["bottle"]
    bottle.process.send_signal(signal.SIGTERM)
    assert bottle.finish() == 128 + signal.SIGTERM
    assert "SIGTERM received, tearing down" in "".join(bottle.stderr)
    assert node.leftovers(namespace, launched["bottle_id"]) == []


# -- teardown whatever happens ----------------------------------------------------------------

def test_sigterm_while_starting_removes_everything(node, namespace, manifest, tmp_path):
    bottle = start(manifest(AGENT_RULES), ["true"], tmp_path)
    try:
        bottle_id = bottle.bottle_id
        deadline = time.monotonic() + 60
        while not [kind for kind, _ in node.labelled(namespace, f"dev.bottle.bottle={bottle_id}") if kind == "Pod"]:
            assert time.monotonic() < deadline, "the bottle's Pods were never created"
            time.sleep(0.05)
        assert not [line for line in bottle.stderr if "bottle: egress log:" in line], "the bottle was already up"
        bottle.process.send_signal(signal.SIGTERM)
        code = bottle.finish()
    finally:
        if bottle.process.poll() is None:
            bottle.process.kill()
    assert code == 128 + signal.SIGTERM, "".join(bottle.stderr)
    assert "SIGTERM received, tearing down" in "".join(bottle.stderr)
    assert node.leftovers(namespace, bottle_id) == []


def test_a_pod_that_never_becomes_ready_fails_start_with_a_clear_error(node, namespace, manifest, tmp_path):
    path = manifest(AGENT_RULES, agent_image="bottle-test/no-such-image:0")
    result = subprocess.run([sys.executable, "-m", "bottle", "start", str(path), "--", "true"], capture_output=True,
                            env=k8s_env(), timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    stderr = result.stderr.decode(errors="replace")
    bottle_id = re.search(r"bottle: starting (\S+)", stderr).group(1)
    assert result.returncode == 5, stderr
    assert re.search(rf"^Error: the agent Pod {bottle_id}-agent cannot start: container trust: "
                     r"(ErrImagePull|ImagePullBackOff): .*bottle-test/no-such-image:0", stderr, re.M), stderr
    assert "Tip: make the image available to the cluster's nodes, or set another one in the manifest" in stderr
    assert "Traceback" not in stderr
    assert node.leftovers(namespace, bottle_id) == []


def test_cleanup_removes_what_a_killed_bottle_left(node, namespace, manifest, tmp_path):
    bottle = start(manifest(AGENT_RULES), ["sleep", "600"], tmp_path)
    bottle.wait_for("the bottle to be up", "bottle: egress log:")
    bottle_id = bottle.bottle_id
    bottle.process.kill()  # SIGKILL: no teardown runs
    bottle.finish()
    assert node.leftovers(namespace, bottle_id), "SIGKILL should have left the bottle behind"
    result = subprocess.run([sys.executable, "-m", "bottle", "cleanup", "--backend", "kubernetes", "--namespace",
                             namespace], capture_output=True, env=k8s_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"removing Pod {bottle_id}-agent (namespace {namespace})" in result.stdout.decode()
    assert node.leftovers(namespace, bottle_id) == []


def test_one_delete_of_the_parent_removes_the_whole_bottle(node, namespace, manifest, tmp_path):
    """Every object is owned by the parent ConfigMap, so the cluster's garbage collector
    removes them all when it goes, whatever happened to `bottle start`."""
    bottle = start(manifest(AGENT_RULES), ["sleep", "600"], tmp_path)
    bottle.wait_for("the bottle to be up", "bottle: egress log:")
    bottle_id = bottle.bottle_id
    bottle.process.kill()
    bottle.finish()
    assert len(node.leftovers(namespace, bottle_id)) == 7
    node.core.delete_namespaced_config_map(bottle_id, namespace, propagation_policy="Foreground")
    deadline = time.monotonic() + 60
    while left := node.leftovers(namespace, bottle_id):
        assert time.monotonic() < deadline, f"still there after deleting the parent: {left}"
        time.sleep(0.5)


# -- a cluster bottle cannot use ------------------------------------------------------------------

def test_a_kubeconfig_whose_credentials_are_refused_is_a_clear_error(node, namespace, manifest, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(re.sub(r"token: \S+", "token: not-the-token", KUBECONFIG.read_text()))
    result = subprocess.run([sys.executable, "-m", "bottle", "start", str(manifest(AGENT_RULES)), "--", "true"],
                            capture_output=True, env=k8s_env({"KUBECONFIG": str(kubeconfig)}), timeout=120)
    assert result.returncode == 4
    assert result.stderr.decode().splitlines()[-2:] == [
        "Error: the Kubernetes API server at https://127.0.0.1:16443 refused the credentials of kubeconfig "
        "context 'bottle-test-node' (401 Unauthorized)",
        "Tip: log in to the cluster again, or check the context's user",
    ]
