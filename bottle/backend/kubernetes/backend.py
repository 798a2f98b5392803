"""The Kubernetes backend: create a KubernetesBottlePlan's objects, run the agent, delete them all."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bottle.backend.base import (
    BOTTLE_LABEL,
    KEEP_ENV,
    MANAGED_LABEL,
    OWNER,
    OWNER_LABEL,
    PROXY_IP,
    ROLE_LABEL,
    BottleBackend,
    RunningBottle,
    owner_alive,
    owner_label,
    placeholder_marker,
)
from bottle.backend.kubernetes import plan as kp
from bottle.backend.kubernetes.client import KINDS, Cluster, context_namespace
from bottle.errors import BackendError, StartError
from bottle.launch.pipelock_config import render_pipelock_config
from bottle.launch.policy_file import SCANNER_MAX_BODY_BYTES, proxy_files, read_upstream_ca
from bottle.launch.secrets import LaunchSecrets
from bottle.launch.tarball import tar_of
from bottle.plan import BottlePlan
from bottle.signals import signals_ignored

# Pulling an agent image onto a fresh node can take minutes; a container that cannot
# start at all is reported at once, not after this.
READY_TIMEOUT = 180.0
DELETE_TIMEOUT = 60.0
POLL_SECONDS = 0.25
# Waiting reasons after which a container will not start without a change by someone.
FATAL_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError", "PreCreateHookError", "PreStartHookError",
})
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})


class KubernetesBackend(BottleBackend[kp.KubernetesBottlePlan]):
    name = "kubernetes"

    def __init__(self, *, env: Mapping[str, str], namespace: str | None = None, context: str | None = None,
                 cluster: Cluster | None = None) -> None:
        self.env = env
        self.namespace = namespace
        self.context = context
        self._cluster = cluster
        self._namespace_in_use: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str], *, namespace: str | None = None,
                         context: str | None = None) -> KubernetesBackend:
        from bottle.backend.kubernetes.client import _client_modules

        _client_modules()  # a missing optional dependency is reported before anything else
        return cls(env=env, namespace=namespace, context=context)

    def plan(self, bottle: BottlePlan) -> kp.KubernetesBottlePlan:
        context = self.context or bottle.kubernetes.context
        namespace = (self.namespace or bottle.kubernetes.namespace or context_namespace(self.env, context)
                     or "default")
        return kp.kubernetes_plan(bottle, namespace=namespace, context=context)

    def cluster(self, context: str | None) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster.connect(self.env, context=context)
        return self._cluster

    # -- launch -------------------------------------------------------------------

    @contextlib.contextmanager
    def launch(self, plan: kp.KubernetesBottlePlan, secrets: LaunchSecrets, *,
               env: Mapping[str, str]) -> Iterator[RunningBottle]:
        cluster = self.cluster(plan.context)
        self._namespace_in_use = plan.namespace
        created: list[tuple[str, str]] = []
        try:
            yield self._start(cluster, plan, secrets, env, created)
        finally:
            # Also when the start fails half-way, with signals held off so a second
            # Ctrl-C cannot interrupt it.
            with signals_ignored():
                if created:
                    self._teardown(cluster, plan.namespace, plan.bottle.bottle_id, created,
                                   keep=bool(self.env.get(KEEP_ENV)))

    def _start(self, cluster: Cluster, plan: kp.KubernetesBottlePlan, secrets: LaunchSecrets,
               env: Mapping[str, str], created: list[tuple[str, str]]) -> RunningBottle:
        namespace = plan.namespace
        cluster.check_namespace(namespace)
        markers = {OWNER: owner_label(),
                   **{placeholder_marker(ref): value for ref, value in secrets.placeholders.items()}}
        # Secret values go only into the one field of the one object that holds them.
        values = {
            kp.CA_SECRET_VALUE: secrets.ca.mitmproxy_pem.decode(),
            kp.CA_CERT_VALUE: secrets.ca.cert_pem.decode(),
            kp.PIPELOCK_CONFIG_VALUE: render_pipelock_config(
                scan_listen=kp.SCANNER_LISTEN, main_listen=kp.PIPELOCK_MAIN_LISTEN,
                token=secrets.scanner_token, max_body_bytes=SCANNER_MAX_BODY_BYTES * 2),
            **{kp.credential_marker(ref): env[ref] for ref in plan.bottle.egress.token_refs if env.get(ref)},
        }
        proxy, agent = plan.object("Pod", "proxy").name, plan.object("Pod", "agent").name
        if plan.bottle.egress.upstream_ca:  # a bad path fails before anything is created
            read_upstream_ca(plan.bottle.egress.upstream_ca)
        proxy_ip = ""
        for obj in plan.objects:
            if obj.name == agent and obj.kind == "Pod":
                proxy_ip = self._wait_for_pod(cluster, namespace, proxy, "proxy", need=_has_address)["status"]["podIP"]
                markers[PROXY_IP] = proxy_ip
            body = _with_values(kp.substitute(obj.body, markers), values)
            # Record the name first: a create that fails half-way may still have made it.
            created.append((obj.kind, obj.name))
            made = cluster.create(body)
            if obj is plan.parent:
                markers[kp.PARENT_UID] = made["metadata"]["uid"]
        self._wait_for_pod(cluster, namespace, proxy, "proxy", need=_proxy_ready)
        agent_ip = self._wait_for_pod(cluster, namespace, agent, "agent", need=_agent_ready)["status"]["podIP"]
        files = proxy_files(plan.bottle, secrets, agent_ip=agent_ip, proxy_ip=proxy_ip, run_dir=kp.RUN_DIR,
                            scanner_url=f"http://{kp.SCANNER_LISTEN}/api/v1/scan")
        code, out, err = cluster.run(namespace, proxy, "proxy", [*kp.RECEIVE_COMMAND, "--timeout", "60"],
                                     input=tar_of(files, mode=0o400, uid=kp.PROXY_USER, gid=kp.PROXY_USER),
                                     timeout=90)
        if code != 0:
            detail = (err or out).decode(errors="replace").strip()
            raise StartError(f"the egress proxy {proxy} did not start serving: {detail}\n"
                             + _log_excerpt(cluster, namespace, proxy, "proxy"))
        return RunningBottle(bottle_id=plan.bottle.bottle_id, agent=agent, proxy=proxy, scanner=f"{proxy}/pipelock",
                             addresses={"proxy": proxy_ip, "agent": agent_ip})

    def _wait_for_pod(self, cluster: Cluster, namespace: str, name: str, role: str,
                      need: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            pod = cluster.read(namespace, "Pod", name) or {}
            problem = _pod_problem(pod)
            if problem is not None:
                container, reason, detail = problem
                tip = None
                if reason in IMAGE_REASONS:
                    tip = "make the image available to the cluster's nodes, or set another one in the manifest"
                raise StartError(f"the {role} Pod {name} cannot start: container {container}: {detail}\n"
                                 + _log_excerpt(cluster, namespace, name, container), tip=tip)
            if need(pod):
                return pod
            if time.monotonic() > deadline:
                raise StartError(f"the {role} Pod {name} did not become ready within {READY_TIMEOUT:g} s: "
                                 + _pod_state(pod))
            time.sleep(POLL_SECONDS)

    def _teardown(self, cluster: Cluster, namespace: str, bottle_id: str, created: Sequence[tuple[str, str]],
                  *, keep: bool) -> None:
        if keep:
            for kind, name in created:
                print(f"bottle: {KEEP_ENV} is set, keeping {kind} {name}", file=sys.stderr)
            return
        try:
            remove_bottle(cluster, namespace, bottle_id, known=created)
        except BackendError as e:
            print(f"bottle: warning: {e.message}\n  `bottle cleanup --backend kubernetes` removes it later.",
                  file=sys.stderr)

    # -- running ------------------------------------------------------------------

    @contextlib.contextmanager
    def follow_egress_log(self, running: RunningBottle, path: Path) -> Iterator[None]:
        cluster, namespace = self.cluster(self.context), self._namespace_in_use
        path.parent.mkdir(parents=True, exist_ok=True)
        response = cluster.follow_log(namespace, running.proxy, "proxy")

        def copy() -> None:
            with contextlib.suppress(Exception), open(path, "wb") as sink:
                pending = b""
                for chunk in response.stream(65536):
                    *lines, pending = (pending + chunk).split(b"\n")
                    sink.writelines(line + b"\n" for line in lines if _is_log_line(line))
                    sink.flush()

        follower = threading.Thread(target=copy, name="bottle-egress-log", daemon=True)
        follower.start()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                # shutdown() ends the copy thread's blocked read; close() alone would not.
                response.shutdown()
            follower.join(timeout=5)
            # Write the complete log once more so nothing logged at the very end is lost.
            data = cluster.log(namespace, running.proxy, "proxy")
            if data:
                path.write_bytes(b"".join(line + b"\n" for line in data.splitlines() if _is_log_line(line)))

    def run_agent(self, running: RunningBottle, command: Sequence[str], *, interactive: bool) -> int:
        from bottle.backend.kubernetes.terminal import run_exec

        cluster = self.cluster(self.context)
        return run_exec(cluster, self._namespace_in_use, running.agent, "agent", command, interactive=interactive)

    # -- cleanup ------------------------------------------------------------------

    def cleanup(self, *, remove_running: bool, dry_run: bool, echo: Callable[[str], None]) -> int:
        cluster = self.cluster(self.context)
        namespace = self.namespace or context_namespace(self.env, self.context) or "default"
        found: dict[str, list[tuple[str, str]]] = {}
        owners: dict[str, str] = {}
        for kind in KINDS:
            for obj in cluster.list(namespace, kind, f"{MANAGED_LABEL}=true"):
                meta = obj["metadata"]
                bottle_id = (meta.get("labels") or {}).get(BOTTLE_LABEL, "")
                found.setdefault(bottle_id, []).append((kind, meta["name"]))
                if kind == "ConfigMap" and meta["labels"].get(ROLE_LABEL) == "bottle":
                    owners[bottle_id] = (meta.get("annotations") or {}).get(OWNER_LABEL, "")
        removed = 0
        for bottle_id, objects in sorted(found.items()):
            owner = owners.get(bottle_id, "")
            if not remove_running and owner_alive(owner):
                echo(f"skipping bottle {bottle_id}: its `bottle start` is still running ({owner}); use --all")
                continue
            for kind, name in objects:
                echo(f"{'would remove' if dry_run else 'removing'} {kind} {name} (namespace {namespace})")
            if not dry_run:
                remove_bottle(cluster, namespace, bottle_id, known=objects)
            removed += len(objects)
        if removed == 0:
            echo(f"nothing to clean up in namespace {namespace}")
        return removed


def remove_bottle(cluster: Cluster, namespace: str, bottle_id: str, *, known: Sequence[tuple[str, str]] = ()) -> None:
    """Delete every object of a bottle and wait until none is left.

    The Pods go first with a 1 s grace period, the parent last with foreground
    propagation; objects found by label that were not known are deleted too (a create
    whose answer was lost, or a run that was killed)."""
    selector = f"{BOTTLE_LABEL}={bottle_id}"
    order = sorted(known, key=lambda item: (item[0] != "Pod", item == ("ConfigMap", bottle_id)))
    deleting: set[tuple[str, str]] = set()

    def delete(kind: str, name: str) -> None:
        if kind == "Pod":
            cluster.delete(namespace, kind, name, grace_period_seconds=1)
        elif (kind, name) == ("ConfigMap", bottle_id):
            cluster.delete(namespace, kind, name, propagation_policy="Foreground")
        else:
            cluster.delete(namespace, kind, name)
        deleting.add((kind, name))

    for kind, name in order:
        delete(kind, name)
    deadline = time.monotonic() + DELETE_TIMEOUT
    while True:
        left = [(kind, obj) for kind in KINDS for obj in cluster.list(namespace, kind, selector)]
        if not left:
            return
        for kind, obj in left:
            if (kind, obj["metadata"]["name"]) not in deleting and not obj["metadata"].get("deletionTimestamp"):
                delete(kind, obj["metadata"]["name"])
        if time.monotonic() > deadline:
            names = ", ".join(f"{kind} {obj['metadata']['name']}" for kind, obj in left)
            raise BackendError(f"could not remove {names} from namespace {namespace} within {DELETE_TIMEOUT:g} s")
        time.sleep(POLL_SECONDS)


def _is_log_line(line: bytes) -> bool:
    # A container's log is its stdout and stderr together; the request log is the JSON
    # lines on stdout, the proxy's diagnostics (stderr) are plain text.
    return line.startswith(b"{")


def _with_values(body: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    for field in ("stringData", "data"):
        if body.get(field) and body["kind"] in ("Secret", "ConfigMap"):
            body[field] = {key: values.get(value, value) for key, value in body[field].items()}
    return body


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _sidecars(pod: dict[str, Any]) -> set[str]:
    return {c["name"] for c in (pod.get("spec") or {}).get("initContainers") or [] if c.get("restartPolicy") == "Always"}


def _pod_problem(pod: dict[str, Any]) -> tuple[str, str, str] | None:
    """(container, reason, detail) when a container cannot or did not start as it should."""
    init_names = {c["name"] for c in (pod.get("spec") or {}).get("initContainers") or []}
    sidecars = _sidecars(pod)
    for status in _statuses(pod):
        state = status.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") in FATAL_WAITING:
            reason = waiting["reason"]
            return status["name"], reason, f"{reason}: {waiting.get('message') or 'no message'}"
        if terminated:
            finished_init = status["name"] in init_names - sidecars and terminated.get("exitCode") == 0
            if not finished_init:
                reason = terminated.get("reason") or "Terminated"
                return status["name"], reason, (f"exited with code {terminated.get('exitCode')} ({reason})"
                                                 + (f": {terminated['message']}" if terminated.get("message") else ""))
    if (pod.get("status") or {}).get("phase") == "Failed":
        status = pod["status"]
        return "-", status.get("reason") or "Failed", f"{status.get('reason')}: {status.get('message')}"
    return None


def _pod_state(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True" and condition.get("message"):
            return f"{condition['type']} is {condition['status']}: {condition.get('reason')}: {condition['message']}"
    waiting = [f"{s['name']} {s['state']['waiting'].get('reason')}" for s in _statuses(pod)
               if (s.get("state") or {}).get("waiting")]
    return f"phase {status.get('phase', 'unknown')}" + (f"; waiting: {', '.join(waiting)}" if waiting else "")


def _has_address(pod: dict[str, Any]) -> bool:
    return bool((pod.get("status") or {}).get("podIP"))


def _running(pod: dict[str, Any], name: str) -> bool:
    return any(s["name"] == name and "running" in (s.get("state") or {}) for s in _statuses(pod))


def _proxy_ready(pod: dict[str, Any]) -> bool:
    sidecar_started = any(s["name"] == "pipelock" and s.get("started") for s in _statuses(pod))
    return _has_address(pod) and sidecar_started and _running(pod, "proxy")


def _agent_ready(pod: dict[str, Any]) -> bool:
    return _has_address(pod) and _running(pod, "agent")


def _log_excerpt(cluster: Cluster, namespace: str, pod: str, container: str) -> str:
    if container == "-":
        return ""
    text = cluster.log(namespace, pod, container, tail_lines=30).decode(errors="replace").strip()
    if not text:
        return "  (no log lines)"
    return "  last log lines:\n" + "\n".join("    " + line for line in text.splitlines()[-30:])

