"""The Kubernetes plan: exactly which objects a bottle is made of, as the bodies sent.

`kubernetes_plan(plan, namespace=..., context=...)` is pure. The launcher creates these
very bodies, in this order, after substituting the `<...>` markers for values known only
at launch (the parent's uid, the proxy Pod's address, the owner, the placeholders and the
Secrets' contents); the dry-run prints them. docs/prds/0011-kubernetes-backend.md says why
each setting is there.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from bottle import __version__
from bottle.backend.base import (
    AGENT_CA_BUNDLE,
    AGENT_CA_FILE,
    BOTTLE_LABEL,
    LABEL_PREFIX,
    OWNER,
    OWNER_LABEL,
    PROXY_IP,
    ROLE_LABEL,
    VERSION_LABEL,
    agent_environment,
    bottle_labels,
)
from bottle.errors import NotSupportedError
from bottle.plan import PROXY_PORT, SCANNER_PORT, BottlePlan, bottle_document

MANIFEST_ANNOTATION = f"{LABEL_PREFIX}.manifest"
PARENT_UID = "<parent-uid>"
CA_SECRET_VALUE = "<the bottle CA's private key and certificate, made at launch>"
PIPELOCK_CONFIG_VALUE = "<pipelock's configuration with the scanner's token, made at launch>"
CA_CERT_VALUE = "<the bottle CA's certificate, made at launch>"


def credential_marker(token_ref: str) -> str:
    return f"<${token_ref} from bottle's environment>"


PROXY_USER = 10001
PIPELOCK_USER = 65534
RUN_DIR = "/run/bottle"
CA_MOUNT_DIR = "/run/bottle-ca"
PIPELOCK_CONFIG_DIR = "/etc/pipelock"
AGENT_CA_DIR = "/etc/bottle-ca"
TRUST_DIR = "/run/bottle-trust"
SCANNER_LISTEN = f"127.0.0.1:{SCANNER_PORT}"
PIPELOCK_MAIN_LISTEN = "127.0.0.1:8888"
DNS_PORT = 53
# The proxy's launcher waits this long for its policy, which comes once the agent Pod runs.
POLICY_WAIT_SECONDS = 300
RECEIVE_COMMAND = ("/opt/bottle-proxy/bin/python", "-m", "bottle.mitm.receive", "--dir", RUN_DIR)

# Merges the image's public roots with the bottle CA, as the agent's own user: under the
# restricted Pod Security Standard nothing may run as root to install it (docs/prds/0011-kubernetes-backend.md).
TRUST_SCRIPT = (
    f"cat {AGENT_CA_BUNDLE} {AGENT_CA_DIR}/bottle-egress-ca.crt > {TRUST_DIR}/ca-certificates.crt"
)

_RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class KubernetesObject:
    """One object as it will be sent, and a line saying what it is for."""

    body: Mapping[str, Any]
    purpose: str

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class KubernetesBottlePlan:
    """A BottlePlan made concrete for Kubernetes: the objects in creation order."""

    bottle: BottlePlan
    namespace: str
    context: str | None
    objects: tuple[KubernetesObject, ...]

    def object(self, kind: str, role: str) -> KubernetesObject:
        return next(o for o in self.objects
                    if o.kind == kind and o.body["metadata"]["labels"][ROLE_LABEL] == role)

    @property
    def parent(self) -> KubernetesObject:
        return self.object("ConfigMap", "bottle")

    @property
    def pods(self) -> tuple[KubernetesObject, ...]:
        return tuple(o for o in self.objects if o.kind == "Pod")

    @property
    def selector(self) -> str:
        return f"{BOTTLE_LABEL}={self.bottle.bottle_id}"

    def to_dict(self) -> dict[str, Any]:
        """The `bottle start --dry-run --format=json` document (docs/dry-run-json.md)."""
        plan = self.bottle
        return {
            **bottle_document(plan, backend="kubernetes", memory=memory_quantity(plan.agent.resources.memory_bytes)),
            "kubernetes": {
                "namespace": self.namespace,
                "context": self.context,
                "objects": [copy.deepcopy(dict(o.body)) for o in self.objects],
                "teardown": [
                    *({"kind": "Pod", "name": pod.name, "grace_period_seconds": 1} for pod in self.pods),
                    {"kind": "ConfigMap", "name": self.parent.name, "propagation_policy": "Foreground"},
                ],
            },
        }

    def render_text(self) -> str:
        from bottle.backend.kubernetes.preflight import render_preflight

        return render_preflight(self)


def cpu_quantity(cpus: float) -> str:
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(size: int) -> str:
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def kubernetes_plan(plan: BottlePlan, *, namespace: str, context: str | None) -> KubernetesBottlePlan:
    if plan.agent.workspace is not None:
        raise NotSupportedError(
            f"agent.workspace: the kubernetes backend cannot mount the host directory {plan.agent.workspace} "
            "into a cluster",
            tip=f"remove agent.workspace for this backend; the agent then starts in its image's {plan.agent.workdir}",
        )
    if plan.egress.capture == "transparent":
        # Capture needs a helper with NET_ADMIN in the agent's network namespace, which the
        # restricted Pod Security Standard the bottle's namespace enforces does not allow.
        raise NotSupportedError(
            "egress.capture: transparent is not supported on the kubernetes backend: installing the capture "
            "needs NET_ADMIN in the agent Pod, which the restricted Pod Security Standard forbids",
            tip="use egress.capture: proxy (the default) on Kubernetes, or run this bottle with --backend docker",
        )
    bid = plan.bottle_id
    build = _Builder(plan, namespace)
    credentials = plan.kubernetes.credentials_secret or f"{bid}-credentials"
    objects = [
        KubernetesObject(
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {**build.metadata(bid, "bottle", owned=False),
                             "annotations": {OWNER_LABEL: OWNER, MANIFEST_ANNOTATION: plan.manifest}},
            },
            purpose="the parent: every other object is owned by it, so deleting it removes the bottle",
        ),
        KubernetesObject(
            body=build.network_policy(f"{bid}-agent", "agent", ingress=None, egress_to="proxy"),
            purpose=f"agent Pod: no ingress; egress only to the proxy Pod on TCP {PROXY_PORT} and UDP/TCP {DNS_PORT}",
        ),
        KubernetesObject(
            body=build.network_policy(f"{bid}-proxy", "proxy", ingress="agent", egress_to=None),
            purpose=f"proxy Pod: ingress only from the agent Pod on TCP {PROXY_PORT} and UDP/TCP {DNS_PORT}",
        ),
        KubernetesObject(
            body={
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": build.metadata(f"{bid}-proxy", "secret-proxy"),
                "type": "Opaque",
                "immutable": True,
                "stringData": {"mitmproxy-ca.pem": CA_SECRET_VALUE, "pipelock.yaml": PIPELOCK_CONFIG_VALUE},
            },
            purpose="the CA key (proxy container only) and pipelock's config with its token (pipelock only)",
        ),
    ]
    if plan.egress.token_refs and not plan.kubernetes.credentials_secret:
        present = [ref for ref in plan.egress.token_refs if ref in plan.egress.present_token_refs]
        objects.append(KubernetesObject(
            body={
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": build.metadata(credentials, "secret-credentials"),
                "type": "Opaque",
                "immutable": True,
                "stringData": {ref: credential_marker(ref) for ref in present},
            },
            purpose="real credentials from bottle's environment (" + (", ".join(present) or "none set")
                    + "); read by the proxy container only",
        ))
    objects += [
        KubernetesObject(
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": build.metadata(f"{bid}-agent-ca", "agent-ca"),
                "immutable": True,
                "data": {"bottle-egress-ca.crt": CA_CERT_VALUE},
            },
            purpose="the CA certificate (no key) for the agent's trust store",
        ),
        KubernetesObject(
            body=build.proxy_pod(credentials),
            purpose=f"the proxy (uid {PROXY_USER}, read-only root, the only holder of the CA key and credentials) "
                    f"and pipelock as its sidecar (uid {PIPELOCK_USER}), listening on the Pod's loopback only",
        ),
        KubernetesObject(
            body=build.agent_pod(),
            purpose=f"the agent (uid {plan.agent.user.split(':')[0]}): no service account token, DNS and "
                    "HTTP(S) only through the proxy",
        ),
    ]
    return KubernetesBottlePlan(bottle=plan, namespace=namespace, context=context, objects=tuple(objects))


class _Builder:
    def __init__(self, plan: BottlePlan, namespace: str) -> None:
        self.plan = plan
        self.namespace = namespace

    def labels(self, role: str) -> dict[str, str]:
        return {**dict(bottle_labels(self.plan, role)), VERSION_LABEL: __version__,
                "app.kubernetes.io/managed-by": "bottle"}

    def selector(self, role: str) -> dict[str, Any]:
        return {"matchLabels": {BOTTLE_LABEL: self.plan.bottle_id, ROLE_LABEL: role}}

    def metadata(self, name: str, role: str, *, owned: bool = True) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": self.labels(role)}
        if owned:
            metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": self.plan.bottle_id,
                                            "uid": PARENT_UID, "blockOwnerDeletion": True}]
        return metadata

    @staticmethod
    def proxy_ports() -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": PROXY_PORT}, {"protocol": "UDP", "port": DNS_PORT},
                {"protocol": "TCP", "port": DNS_PORT}]

    def network_policy(self, name: str, role: str, *, ingress: str | None, egress_to: str | None) -> dict[str, Any]:
        # A policy type listed without rules denies everything of that type.
        spec: dict[str, Any] = {"podSelector": self.selector(role), "policyTypes": ["Ingress"]}
        if ingress:
            spec["ingress"] = [{"from": [{"podSelector": self.selector(ingress)}], "ports": self.proxy_ports()}]
        if egress_to:
            spec["policyTypes"].append("Egress")
            spec["egress"] = [{"to": [{"podSelector": self.selector(egress_to)}], "ports": self.proxy_ports()}]
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": self.metadata(name, f"network-policy-{role}"), "spec": spec}

    @staticmethod
    def pod_security(user: int, group: int, **extra: Any) -> dict[str, Any]:
        return {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": group,
                "seccompProfile": {"type": "RuntimeDefault"}, **extra}

    def pod(self, name: str, role: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(name, role),
            "spec": {
                # No Kubernetes credential and no Service addresses in either Pod.
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                # A container that stops ends the bottle; it is never restarted without its policy.
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                **spec,
            },
        }

    def proxy_pod(self, credentials: str) -> dict[str, Any]:
        plan = self.plan
        spec: dict[str, Any] = {}
        if plan.kubernetes.proxy_host_aliases:
            spec["hostAliases"] = [{"ip": a.ip, "hostnames": list(a.hostnames)} for a in plan.kubernetes.proxy_host_aliases]
        spec["securityContext"] = self.pod_security(
            PROXY_USER, PROXY_USER, fsGroup=PROXY_USER,
            # The proxy answers the agent's DNS on port 53 without any capability.
            sysctls=[{"name": "net.ipv4.ip_unprivileged_port_start", "value": str(DNS_PORT)}],
        )
        spec["initContainers"] = [{
            "name": "pipelock",
            "image": plan.scanner.image,
            # A native sidecar: started, and healthy, before the proxy; stopped after it.
            "restartPolicy": "Always",
            "args": ["run", "--config", f"{PIPELOCK_CONFIG_DIR}/pipelock.yaml"],
            "securityContext": {**_RESTRICTED, "runAsUser": PIPELOCK_USER, "runAsGroup": PIPELOCK_USER,
                                "readOnlyRootFilesystem": True},
            "startupProbe": {"exec": {"command": ["/pipelock", "healthcheck"]}, "periodSeconds": 1,
                             "failureThreshold": 120},
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "volumeMounts": [{"name": "pipelock-config", "mountPath": PIPELOCK_CONFIG_DIR, "readOnly": True}],
        }]
        spec["containers"] = [{
            "name": "proxy",
            "image": plan.proxy_image,
            "args": ["--policy", f"{RUN_DIR}/policy.json", "--confdir", f"{RUN_DIR}/mitmproxy",
                     "--ca", f"{CA_MOUNT_DIR}/mitmproxy-ca.pem", "--wait-for-files", str(POLICY_WAIT_SECONDS)],
            "env": [{"name": ref, "valueFrom": {"secretKeyRef": {"name": credentials, "key": ref, "optional": True}}}
                    for ref in plan.egress.token_refs],
            "ports": [{"name": "proxy", "containerPort": PROXY_PORT, "protocol": "TCP"},
                      {"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                      {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"}],
            "securityContext": {**_RESTRICTED, "readOnlyRootFilesystem": True},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
            "volumeMounts": [
                {"name": "run", "mountPath": RUN_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "ca", "mountPath": CA_MOUNT_DIR, "readOnly": True},
            ],
        }]
        spec["volumes"] = [
            {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "ca", "secret": {"secretName": f"{plan.bottle_id}-proxy", "defaultMode": 0o440,
                                      "items": [{"key": "mitmproxy-ca.pem", "path": "mitmproxy-ca.pem"}]}},
            {"name": "pipelock-config", "secret": {"secretName": f"{plan.bottle_id}-proxy", "defaultMode": 0o440,
                                                   "items": [{"key": "pipelock.yaml", "path": "pipelock.yaml"}]}},
        ]
        return self.pod(f"{plan.bottle_id}-proxy", "proxy", spec)

    def agent_pod(self) -> dict[str, Any]:
        plan = self.plan
        agent = plan.agent
        user, group = (int(part) for part in agent.user.split(":"))
        ca = {"name": "agent-ca", "configMap": {"name": f"{plan.bottle_id}-agent-ca", "defaultMode": 0o444}}
        spec = {
            # The Pod's pause process is PID 1 and reaps orphans, as `--init` does on Docker.
            "shareProcessNamespace": True,
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": [PROXY_IP]},
            "securityContext": self.pod_security(user, group),
            "initContainers": [{
                "name": "trust",
                "image": agent.image,
                "command": ["sh", "-c", TRUST_SCRIPT],
                "securityContext": {**_RESTRICTED, "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "agent-ca", "mountPath": AGENT_CA_DIR, "readOnly": True},
                                 {"name": "trust", "mountPath": TRUST_DIR}],
            }],
            "containers": [{
                "name": "agent",
                "image": agent.image,
                # The agent command runs through exec once the proxy serves (docs/prds/0011-kubernetes-backend.md).
                "command": ["sleep", "infinity"],
                "workingDir": agent.workdir,
                "env": [{"name": name, "value": value} for name, value in agent_environment(plan)],
                "securityContext": dict(_RESTRICTED),
                "resources": {
                    "requests": {"cpu": cpu_quantity(min(agent.resources.cpus, 0.1)),
                                 "memory": memory_quantity(min(agent.resources.memory_bytes, 256 << 20))},
                    "limits": {"cpu": cpu_quantity(agent.resources.cpus),
                               "memory": memory_quantity(agent.resources.memory_bytes)},
                },
                "volumeMounts": [
                    {"name": "trust", "mountPath": AGENT_CA_BUNDLE, "subPath": "ca-certificates.crt", "readOnly": True},
                    {"name": "agent-ca", "mountPath": AGENT_CA_FILE, "subPath": "bottle-egress-ca.crt", "readOnly": True},
                    # A user the image has no home for gets one (emptyDir is writable by any uid).
                    *([{"name": "home", "mountPath": agent.home}] if agent.home else []),
                ],
            }],
            "volumes": [
                ca,
                {"name": "trust", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                *([{"name": "home", "emptyDir": {"sizeLimit": "1Gi"}}] if agent.home else []),
            ],
        }
        return self.pod(f"{plan.bottle_id}-agent", "agent", spec)


def substitute(value: Any, substitutions: Mapping[str, str]) -> Any:
    """A copy of a body with every marker replaced."""
    if isinstance(value, str):
        for marker, replacement in substitutions.items():
            value = value.replace(marker, replacement)
        return value
    if isinstance(value, Mapping):
        return {k: substitute(v, substitutions) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, substitutions) for v in value]
    return value
