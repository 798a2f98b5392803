"""The Kubernetes backend without a cluster: the plan's objects, the dry-run, the launch and
teardown against a fake cluster, and the errors a user sees for a kubeconfig bottle cannot use.
tests/integration/test_bottle_kubernetes.py proves the same on a real node."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bottle.backend.base import agent_environment, owner_label
from bottle.backend.docker.plan import docker_plan
from bottle.backend.kubernetes import backend as kb
from bottle.backend.kubernetes import plan as kp
from bottle.backend.kubernetes.backend import KubernetesBackend
from bottle.cli import cli, main
from bottle.errors import BackendError, NotSupportedError, StartError
from bottle.launch.secrets import make_secrets
from bottle.manifest import load_manifest
from bottle.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kubernetes.yaml"
GOLDEN = ROOT / "tests" / "unit" / "golden" / "dry-run-kubernetes.json"


def example_plan(env=None, path=EXAMPLE):
    return build_plan(load_manifest(path), env=env or {}, run_id="abc123")


def kplan(env=None, **kwargs):
    return kp.kubernetes_plan(example_plan(env, **kwargs), namespace="agents", context=None)


def pods(plan):
    return {o.body["metadata"]["labels"]["dev.bottle.role"]: o.body for o in plan.objects if o.kind == "Pod"}


# -- the plan ---------------------------------------------------------------------------

def test_objects_are_made_in_order_parent_first_pods_last():
    assert [(o.kind, o.name) for o in kplan({"ANTHROPIC_API_KEY": "x"}).objects] == [
        ("ConfigMap", "bottle-claude-k8s-abc123"),
        ("NetworkPolicy", "bottle-claude-k8s-abc123-agent"),
        ("NetworkPolicy", "bottle-claude-k8s-abc123-proxy"),
        ("Secret", "bottle-claude-k8s-abc123-proxy"),
        ("Secret", "bottle-claude-k8s-abc123-credentials"),
        ("ConfigMap", "bottle-claude-k8s-abc123-agent-ca"),
        ("Pod", "bottle-claude-k8s-abc123-proxy"),
        ("Pod", "bottle-claude-k8s-abc123-agent"),
    ]


def test_every_object_is_labelled_and_all_but_the_parent_are_owned_by_it():
    plan = kplan()
    for obj in plan.objects:
        meta = obj.body["metadata"]
        assert meta["namespace"] == "agents"
        assert {k: v for k, v in meta["labels"].items() if k != "dev.bottle.role"} == {
            "dev.bottle.managed": "true", "dev.bottle.bottle": "bottle-claude-k8s-abc123",
            "dev.bottle.version": "0.1.0", "app.kubernetes.io/managed-by": "bottle"}
        if obj is plan.parent:
            assert "ownerReferences" not in meta
            assert meta["annotations"]["dev.bottle.owner"] == "<host:pid>"
        else:
            assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "ConfigMap", "name": "bottle-claude-k8s-abc123",
                                                "uid": "<parent-uid>", "blockOwnerDeletion": True}]


def test_every_pod_meets_the_restricted_pod_security_standard():
    for body in pods(kplan()).values():
        spec = body["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in context and "ports" not in container or all(
                "hostPort" not in p for p in container["ports"])
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap"}
        for sysctl in spec["securityContext"].get("sysctls", []):
            assert sysctl["name"] == "net.ipv4.ip_unprivileged_port_start"


def test_the_agent_may_reach_only_the_proxy_and_the_proxy_only_hears_the_agent():
    plan = kplan()
    ports = [{"protocol": "TCP", "port": 8080}, {"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    select = lambda role: {"matchLabels": {"dev.bottle.bottle": "bottle-claude-k8s-abc123", "dev.bottle.role": role}}
    assert plan.object("NetworkPolicy", "network-policy-agent").body["spec"] == {
        "podSelector": select("agent"), "policyTypes": ["Ingress", "Egress"],
        "egress": [{"to": [{"podSelector": select("proxy")}], "ports": ports}]}
    assert plan.object("NetworkPolicy", "network-policy-proxy").body["spec"] == {
        "podSelector": select("proxy"), "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": select("agent")}], "ports": ports}]}


def test_secrets_reach_only_the_proxy_pod_and_each_container_only_its_own():
    by_role = pods(kplan({"ANTHROPIC_API_KEY": "x"}))
    assert "secret" not in json.dumps(by_role["agent"]).lower()
    proxy = by_role["proxy"]["spec"]
    volumes = {v["name"]: v for v in proxy["volumes"]}
    (container,) = proxy["containers"]
    (pipelock,) = proxy["initContainers"]
    assert [m["name"] for m in container["volumeMounts"]] == ["run", "tmp", "ca"]
    assert volumes["ca"]["secret"]["items"] == [{"key": "mitmproxy-ca.pem", "path": "mitmproxy-ca.pem"}]
    assert [m["name"] for m in pipelock["volumeMounts"]] == ["pipelock-config"]
    assert volumes["pipelock-config"]["secret"]["items"] == [{"key": "pipelock.yaml", "path": "pipelock.yaml"}]
    assert container["env"] == [{"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "bottle-claude-k8s-abc123-credentials", "key": "ANTHROPIC_API_KEY", "optional": True}}}]
    assert pipelock["restartPolicy"] == "Always"  # a native sidecar, started before the proxy


def test_an_existing_credentials_secret_is_used_instead_of_making_one(write_manifest):
    path = write_manifest("version: 1\nname: demo\negress:\n  allow: [{host: api.example.com}]\n  routes:\n"
                          "    - {host: api.example.com, auth: {scheme: bearer, token_ref: TOKEN}}\n"
                          "kubernetes: {credentials_secret: team-tokens}\n")
    plan = kp.kubernetes_plan(build_plan(load_manifest(path), env={"TOKEN": "t"}, run_id="r1"),
                              namespace="ns", context=None)
    assert not [o for o in plan.objects if o.name.endswith("-credentials")]
    (proxy,) = pods(plan)["proxy"]["spec"]["containers"]
    assert proxy["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "team-tokens"


def test_the_agent_gets_the_same_environment_as_on_docker():
    plan = example_plan()
    env = {e["name"]: e["value"] for e in pods(kp.kubernetes_plan(plan, namespace="n", context=None))["agent"]
           ["spec"]["containers"][0]["env"]}
    assert env == dict(agent_environment(plan))
    assert env == {e.name: e.value for e in docker_plan(plan).container("agent").env}


def test_limits_follow_the_manifest_in_kubernetes_units():
    agent = pods(kplan())["agent"]["spec"]["containers"][0]
    assert agent["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert (kp.cpu_quantity(0.5), kp.cpu_quantity(1.25), kp.cpu_quantity(3)) == ("500m", "1250m", "3")
    assert (kp.memory_quantity(512 << 20), kp.memory_quantity(1536 << 20), kp.memory_quantity(1000)) == (
        "512Mi", "1536Mi", "1000")


def test_a_host_workspace_is_refused_with_a_reason(write_manifest):
    path = write_manifest("version: 1\nname: demo\nagent: {workspace: .}\n")
    with pytest.raises(NotSupportedError) as refused:
        kp.kubernetes_plan(build_plan(load_manifest(path), env={}, run_id="r1"), namespace="n", context=None)
    assert refused.value.message == (
        f"agent.workspace: the kubernetes backend cannot mount the host directory {path.parent} into a cluster\n"
        "Tip: remove agent.workspace for this backend; the agent then starts in its image's /workspace")
    assert refused.value.exit_code == 6



def test_transparent_capture_is_refused_with_a_reason(write_manifest):
    path = write_manifest("version: 1\nname: demo\negress: {capture: transparent}\n")
    with pytest.raises(NotSupportedError) as refused:
        kp.kubernetes_plan(build_plan(load_manifest(path), env={}, run_id="r1"), namespace="n", context=None)
    assert refused.value.message == (
        "egress.capture: transparent is not supported on the kubernetes backend: installing the capture needs "
        "NET_ADMIN in the agent Pod, which the restricted Pod Security Standard forbids\n"
        "Tip: use egress.capture: proxy (the default) on Kubernetes, or run this bottle with --backend docker")
    assert refused.value.exit_code == 6

# -- namespace, context, dry-run ----------------------------------------------------------

def kubeconfig(tmp_path, *, namespace="from-kubeconfig", server="https://127.0.0.1:1") -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u", "namespace": namespace}},
                     {"name": "two", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "one",
    }))
    return path


def test_the_namespace_comes_from_the_flag_the_manifest_the_kubeconfig_or_default(tmp_path, write_manifest):
    env = {"KUBECONFIG": str(kubeconfig(tmp_path))}
    bare = build_plan(load_manifest(write_manifest("version: 1\nname: demo\n")), env={}, run_id="r1")
    named = build_plan(load_manifest(write_manifest("version: 1\nname: demo\nkubernetes: {namespace: agents}\n",
                                                    name="n.yaml")), env={}, run_id="r1")
    assert KubernetesBackend(env=env, namespace="flag").plan(named).namespace == "flag"
    assert KubernetesBackend(env=env).plan(named).namespace == "agents"
    assert KubernetesBackend(env=env).plan(bare).namespace == "from-kubeconfig"
    assert KubernetesBackend(env=env, context="two").plan(bare).namespace == "default"
    assert KubernetesBackend(env={"KUBECONFIG": str(tmp_path / "none")}).plan(bare).namespace == "default"


def test_the_dry_run_json_matches_the_golden_file(monkeypatch):
    """The Kubernetes dry-run JSON is a contract too (docs/dry-run-json.md); regenerate
    deliberately with BOTTLE_UPDATE_GOLDEN=1."""
    text = json.dumps(kplan().to_dict(), indent=2) + "\n"
    text = text.replace(str(ROOT), "<repo>")
    if os.environ.get("BOTTLE_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_dry_run_prints_every_object_and_touches_nothing(tmp_path):
    env = {"KUBECONFIG": str(kubeconfig(tmp_path)), "ANTHROPIC_API_KEY": "sk-ant-zzz"}
    result = CliRunner().invoke(cli, ["start", "--dry-run", "--namespace", "team", str(EXAMPLE)], env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Kubernetes objects (namespace team, current context; created in this order)" in out
    for kind_name in ("ConfigMap      bottle-claude-k8s-", "NetworkPolicy  bottle-claude-k8s-", "Pod            bottle-claude-k8s-"):
        assert kind_name in out
    assert "delete ConfigMap bottle-claude-k8s-" in out and "sk-ant-zzz" not in out
    document = json.loads(CliRunner().invoke(cli, ["start", "--dry-run", "--format=json", str(EXAMPLE)], env=env).output)
    assert document["bottle"]["backend"] == "kubernetes" and document["kubernetes"]["namespace"] == "agents"
    secret = next(o for o in document["kubernetes"]["objects"] if o["metadata"]["name"].endswith("-credentials"))
    assert secret["stringData"] == {"ANTHROPIC_API_KEY": "<$ANTHROPIC_API_KEY from bottle's environment>"}


def test_namespace_and_context_flags_need_the_kubernetes_backend(capsys):
    assert main(["start", "--dry-run", "--backend", "docker", "--namespace", "x", str(EXAMPLE)]) == 2
    assert "Error: --namespace and --context apply to the kubernetes backend only" in capsys.readouterr().err


# -- a kubeconfig bottle cannot use ------------------------------------------------------------

@pytest.mark.parametrize(("setup", "message"), [
    (lambda tmp: tmp / "missing", "Error: no kubeconfig: {path} does not exist\n"
                                  "Tip: set KUBECONFIG to your cluster's kubeconfig file\n"),
    (lambda tmp: kubeconfig(tmp), "Error: the Kubernetes API server at https://127.0.0.1:1 is unreachable: "
                                  "[Errno 111] Connection refused\n"
                                  "Tip: check that the cluster of kubeconfig context 'one' is running and reachable "
                                  "from here\n"),
])
def test_an_unusable_kubeconfig_is_one_clear_error(tmp_path, monkeypatch, capsys, setup, message):
    path = setup(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert main(["start", "--backend", "kubernetes", "--namespace", "n", str(EXAMPLE), "--", "true"]) == 4
    err = capsys.readouterr().err
    assert err.endswith(message.format(path=path)) and "Traceback" not in err


def test_a_kubeconfig_that_is_not_yaml_or_lacks_the_context_is_named(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    assert main(["cleanup", "--backend", "kubernetes"]) == 4
    assert capsys.readouterr().err.startswith(f"Error: cannot read the kubeconfig {broken}: while parsing a flow node")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path)))
    assert main(["start", "--backend", "kubernetes", "--context", "three", "--namespace", "n", str(EXAMPLE)]) == 4
    assert capsys.readouterr().err.endswith(
        f"Error: the kubeconfig {tmp_path / 'kubeconfig'} has no context 'three'\n"
        "Tip: pass --context, or see `kubectl config get-contexts`\n")


# -- launch and teardown against a fake cluster ---------------------------------------------------

def running_status(pod: dict) -> dict:
    spec = pod["spec"]
    statuses = [{"name": c["name"], "started": True, "state": {"running": {}}} for c in spec["containers"]]
    inits = [{"name": c["name"], "started": True, "state": {"running": {}}} if c.get("restartPolicy") == "Always"
             else {"name": c["name"], "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
             for c in spec.get("initContainers", [])]
    return {"phase": "Running", "podIP": "10.0.0.2" if pod["metadata"]["name"].endswith("-proxy") else "10.0.0.3",
            "containerStatuses": statuses, "initContainerStatuses": inits}


class FakeCluster:
    """Objects in a dict; Pods get the status `status(pod)` returns; fails the create of `fail_on`."""

    def __init__(self, status=running_status, fail_on: str | None = None) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.sent: list[dict] = []
        self.deleted: list[tuple[str, str, dict]] = []
        self.runs: list[tuple[list[str], bytes]] = []
        self.status = status
        self.fail_on = fail_on

    def check_namespace(self, namespace):
        pass

    def create(self, body):
        self.sent.append(body)
        if self.fail_on and body["metadata"]["name"] == self.fail_on and body["kind"] == "Pod":
            raise BackendError(f"creating Pod {self.fail_on} failed (500): boom")
        made = json.loads(json.dumps(body))
        made["metadata"]["uid"] = f"uid-{len(self.sent)}"
        self.objects[(body["kind"], body["metadata"]["name"])] = made
        return made

    def read(self, namespace, kind, name):
        obj = self.objects.get((kind, name))
        if obj is not None and kind == "Pod":
            obj = {**obj, "status": self.status(obj)}
        return obj

    def list(self, namespace, kind, selector):
        key, value = selector.split("=")
        return [o for (k, _), o in self.objects.items() if k == kind and o["metadata"]["labels"].get(key) == value]

    def delete(self, namespace, kind, name, **options):
        self.deleted.append((kind, name, options))
        self.objects.pop((kind, name), None)

    def run(self, namespace, pod, container, command, *, input, timeout):
        self.runs.append((list(command), input))
        return 0, b"", b"bottle: proxy files received"

    def log(self, namespace, pod, container, tail_lines=None):
        return b"a log line"


def launch(cluster, env=None):
    plan = kplan(env)
    backend = KubernetesBackend(env={}, cluster=cluster)
    secrets = make_secrets(plan.bottle.bottle_id, plan.bottle.egress.token_refs)
    return backend, plan, secrets


def test_the_launch_sends_the_planned_bodies_with_secrets_only_in_their_secret():
    cluster = FakeCluster()
    backend, plan, secrets = launch(cluster, {"ANTHROPIC_API_KEY": "sk-ant-real"})
    with backend.launch(plan, secrets, env={"ANTHROPIC_API_KEY": "sk-ant-real"}) as running:
        assert (running.agent, running.addresses) == ("bottle-claude-k8s-abc123-agent",
                                                      {"proxy": "10.0.0.2", "agent": "10.0.0.3"})
    markers = {"<parent-uid>": "uid-1", "<proxy-ip>": "10.0.0.2", "<host:pid>": owner_label(), **{
        f"<placeholder:{ref}>": value for ref, value in secrets.placeholders.items()}}
    values = {"stringData", "data"}
    for obj, sent in zip(plan.objects, cluster.sent, strict=True):
        assert {k: v for k, v in sent.items() if k not in values} == kp.substitute(
            {k: v for k, v in obj.body.items() if k not in values}, markers)
    sent = {(s["kind"], s["metadata"]["name"]): s for s in cluster.sent}
    name = "bottle-claude-k8s-abc123"
    assert sent[("Secret", f"{name}-proxy")]["stringData"]["mitmproxy-ca.pem"] == secrets.ca.mitmproxy_pem.decode()
    assert sent[("Secret", f"{name}-credentials")]["stringData"] == {"ANTHROPIC_API_KEY": "sk-ant-real"}
    assert sent[("ConfigMap", f"{name}-agent-ca")]["data"] == {"bottle-egress-ca.crt": secrets.ca.cert_pem.decode()}
    for key, body in sent.items():
        text = json.dumps(body)
        if key != ("Secret", f"{name}-proxy"):
            assert "PRIVATE KEY" not in text, key
        if key != ("Secret", f"{name}-credentials"):
            assert "sk-ant-real" not in text, key
    # The policy goes into the running proxy over exec, naming the agent Pod as its only client.
    (command, stream), = cluster.runs
    assert command[:3] == ["/opt/bottle-proxy/bin/python", "-m", "bottle.mitm.receive"]
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        policy = json.loads(tar.extractfile("policy.json").read())
    assert policy["clients"] == ["10.0.0.3"] and policy["listen"] == {"host": "10.0.0.2", "port": 8080}
    assert policy["scanner"]["url"] == "http://127.0.0.1:9090/api/v1/scan"
    # Teardown: the Pods first with a short grace period, the parent last in the foreground.
    assert [(k, o) for k, _, o in cluster.deleted][:2] == [("Pod", {"grace_period_seconds": 1})] * 2
    assert cluster.deleted[-1] == ("ConfigMap", "bottle-claude-k8s-abc123", {"propagation_policy": "Foreground"})
    assert cluster.objects == {}


def test_a_failure_while_creating_removes_what_was_made():
    cluster = FakeCluster(fail_on="bottle-claude-k8s-abc123-agent")
    backend, plan, secrets = launch(cluster)
    with pytest.raises(BackendError, match="creating Pod bottle-claude-k8s-abc123-agent failed"):
        with backend.launch(plan, secrets, env={}):
            pass
    # Everything, the agent Pod included: a create that fails may still have made it.
    assert {(kind, name) for kind, name, _ in cluster.deleted} == {(o.kind, o.name) for o in plan.objects}
    assert cluster.objects == {}


def start_error(status) -> str:
    """The StartError of a launch whose Pods have the status `status(pod)`; nothing may be left."""
    cluster = FakeCluster(status=status)
    backend, plan, secrets = launch(cluster)
    with pytest.raises(StartError) as failed:
        with backend.launch(plan, secrets, env={}):
            pass
    assert cluster.objects == {}
    return failed.value.message


def test_a_container_that_cannot_start_fails_at_once_with_its_reason():
    def pull_failure(pod):
        status = running_status(pod)
        if pod["metadata"]["name"].endswith("-agent"):
            status["initContainerStatuses"] = [{"name": "trust", "state": {"waiting": {
                "reason": "ErrImagePull", "message": 'failed to pull image "bottle/agent:0.1.0": not found'}}}]
            status["containerStatuses"] = []
        return status

    assert start_error(pull_failure) == (
        "the agent Pod bottle-claude-k8s-abc123-agent cannot start: container trust: ErrImagePull: "
        'failed to pull image "bottle/agent:0.1.0": not found\n'
        "  last log lines:\n    a log line\n"
        "Tip: make the image available to the cluster's nodes, or set another one in the manifest")


def test_a_pod_that_is_never_ready_fails_after_the_timeout_with_the_schedulers_reason(monkeypatch):
    monkeypatch.setattr(kb, "READY_TIMEOUT", 0.3)

    def unschedulable(pod):
        return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                    "message": "0/1 nodes are available: 1 Insufficient cpu."}]}

    assert start_error(unschedulable) == (
        "the proxy Pod bottle-claude-k8s-abc123-proxy did not become ready within 0.3 s: "
        "PodScheduled is False: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")


def test_cleanup_skips_bottles_whose_start_still_runs(monkeypatch):
    cluster = FakeCluster()
    plan = kplan()
    for obj in plan.objects:
        cluster.create(kp.substitute(obj.body, {"<host:pid>": "elsewhere:1"}))
    lines: list[str] = []
    backend = KubernetesBackend(env={}, namespace="agents", cluster=cluster)
    monkeypatch.setattr(kb, "owner_alive", lambda owner: owner == "elsewhere:1")
    assert backend.cleanup(remove_running=False, dry_run=False, echo=lines.append) == 0
    assert lines[0] == ("skipping bottle bottle-claude-k8s-abc123: its `bottle start` is still running "
                        "(elsewhere:1); use --all")
    assert backend.cleanup(remove_running=True, dry_run=False, echo=lines.append) == len(plan.objects)
    assert "removing Pod bottle-claude-k8s-abc123-agent (namespace agents)" in lines
    assert cluster.objects == {}


# -- the agent's command over exec ------------------------------------------------------------

class FakeSession:
    """An exec session: output queued up front, stdin recorded; it ends once stdin is closed."""

    def __init__(self, stdout: bytes, stderr: bytes, code: int) -> None:
        self.out, self.err, self.code = [stdout], [stderr], code
        self.stdin = b""
        self.stdin_closed = False
        self.closed = False

    def is_open(self):
        return not self.stdin_closed

    def update(self, timeout=0):
        import time

        time.sleep(0.01)

    def read_stdout(self, timeout=0):
        return self.out.pop() if self.out else b""

    def read_stderr(self, timeout=0):
        return self.err.pop() if self.err else b""

    def write_stdin(self, data):
        self.stdin += data

    def close_channel(self, channel):
        self.stdin_closed = channel == 0

    @property
    def returncode(self):
        return self.code

    def close(self):
        self.closed = True


def test_the_agent_command_gets_stdin_and_returns_its_bytes_and_exit_code(monkeypatch, capsysbinary):
    from bottle.backend.kubernetes.terminal import run_exec

    session = FakeSession(b"out \xff\n", b"err\n", 7)
    calls = []

    class Cluster:
        def exec(self, namespace, pod, container, command, *, stdin, tty):
            calls.append((namespace, pod, container, list(command), stdin, tty))
            return session

    read_end, write_end = os.pipe()
    os.write(write_end, b"typed input")
    os.close(write_end)
    monkeypatch.setattr("sys.stdin", open(read_end, "rb"))
    assert run_exec(Cluster(), "ns", "b-agent", "agent", ["cat"], interactive=False) == 7
    assert calls == [("ns", "b-agent", "agent", ["cat"], True, False)]
    assert session.stdin == b"typed input" and session.stdin_closed and session.closed
    captured = capsysbinary.readouterr()
    assert (captured.out, captured.err) == (b"out \xff\n", b"err\n")
