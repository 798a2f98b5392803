"""The test node (scripts/k8s-node, scripts/lib/k8s.sh) and a small view of its API for
tests: raw JSON in and out through the official client, nothing of bottle's own code."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BOTTLE_CACHE") or REPO / ".cache")
NODE_SCRIPT = REPO / "scripts" / "k8s-node"
KUBECONFIG = CACHE / "k8s" / "node" / "kubeconfig"
NODE_IP = "10.244.0.1"
KUBELET_PORT = 10250


def node_build_running() -> bool:
    """A background build (scripts/lib/k8s.sh start_k8s_build) holds this lock until it ends."""
    try:
        with open(CACHE / "k8s" / "build.lock", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except FileNotFoundError:
        return False
    return False


def node_binaries_missing() -> str | None:
    if node_build_running():
        return None  # `scripts/k8s-node up` waits for it
    for path in ("kubernetes-v1.34.3/kubelet", "kubernetes-v1.34.3/kube-apiserver", "etcd-v3.6.13/etcd",
                 "kube-router-v2.1.0/kube-router"):
        if not (CACHE / "k8s" / "bin" / path).exists():
            return f"{CACHE / 'k8s' / 'bin' / path} is not built (scripts/test builds the test node's binaries)"
    return None


def node_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(NODE_SCRIPT), *args], capture_output=True, timeout=timeout, cwd=REPO)
    if result.returncode != 0:
        raise AssertionError(f"scripts/k8s-node {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')[-4000:]}")
    return result


def router_alive() -> bool:
    """kube-router runs and its chains are hooked into the host's FORWARD chain."""
    pid_file = CACHE / "k8s" / "node" / "kube-router.pid"
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    return "-j KUBE-ROUTER-FORWARD" in rules


class Api:
    """The node's API server as its admin, through the official client; JSON dicts back."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)

    @staticmethod
    def json(response) -> Any:
        return json.loads(response.data) if response.data else {}

    def labelled(self, namespace: str, selector: str) -> list[tuple[str, dict]]:
        """Every ConfigMap, Secret, Pod and NetworkPolicy with the label selector."""
        calls = {"ConfigMap": self.core.list_namespaced_config_map, "Secret": self.core.list_namespaced_secret,
                 "Pod": self.core.list_namespaced_pod,
                 "NetworkPolicy": self.networking.list_namespaced_network_policy}
        found = []
        for kind, call in calls.items():
            items = self.json(call(namespace, label_selector=selector, _preload_content=False))["items"]
            found += [(kind, item) for item in items]
        return found

    def leftovers(self, namespace: str, bottle_id: str) -> list[str]:
        return [f"{kind} {obj['metadata']['name']}"
                for kind, obj in self.labelled(namespace, f"dev.bottle.bottle={bottle_id}")]

    def read(self, namespace: str, kind: str, name: str) -> dict:
        call = {"ConfigMap": self.core.read_namespaced_config_map, "Secret": self.core.read_namespaced_secret,
                "Pod": self.core.read_namespaced_pod,
                "NetworkPolicy": self.networking.read_namespaced_network_policy}[kind]
        return self.json(call(name, namespace, _preload_content=False))

    def pod(self, namespace: str, name: str) -> dict:
        return self.json(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    def wait_pod(self, namespace: str, name: str, predicate, seconds: float = 120) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            pod = self.pod(namespace, name)
            if predicate(pod):
                return pod
            assert time.monotonic() < deadline, f"pod {name} never got there: {json.dumps(pod.get('status'))[:2000]}"
            time.sleep(0.25)

    def log(self, namespace: str, pod: str, container: str | None = None) -> str:
        return self.core.read_namespaced_pod_log(pod, namespace, container=container,
                                                 _preload_content=False).data.decode(errors="replace")

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> str:
        from kubernetes.stream import stream

        return stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                      command=command, stdin=False, stdout=True, stderr=True, tty=False)


class Background:
    """`bottle start` running in the background, its output read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        env=env, cwd=cwd)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.decode(errors="replace"))

    def wait_for(self, what: str, text: str, *, stream: str = "stderr", seconds: float = 180) -> str:
        lines = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + seconds
        while True:
            found = next((line for line in list(lines) if text in line), None)
            if found is not None:
                return found
            if self.process.poll() is not None:
                for reader in self._readers:
                    reader.join(timeout=5)
                found = next((line for line in list(lines) if text in line), None)
                assert found is not None, (f"bottle start ended (exit {self.process.returncode}) before {what}:\n"
                                           + "".join(self.stderr))
                return found
            assert time.monotonic() < deadline, f"never saw {what}:\n{''.join(self.stderr)}"
            time.sleep(0.1)

    @property
    def bottle_id(self) -> str:
        return self.wait_for("the bottle id", "bottle: starting ").split()[-1]

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        for reader in self._readers:
            reader.join(timeout=5)
        return code

