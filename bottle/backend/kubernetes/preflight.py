"""The human-readable preflight that `bottle start --backend kubernetes --dry-run` prints."""

from __future__ import annotations

from bottle.backend.kubernetes.plan import KubernetesBottlePlan, memory_quantity
from bottle.backend.preflight import agent_lines, missing_credentials_lines, policy_lines, scanner_line


def render_preflight(kplan: KubernetesBottlePlan) -> str:
    plan = kplan.bottle
    proxy = kplan.object("Pod", "proxy").name
    lines = [
        *agent_lines(
            plan,
            user="all capabilities dropped, no privilege escalation, seccomp RuntimeDefault",
            workdir="(the image's; no host directory on Kubernetes)",
            limits=f"{memory_quantity(plan.agent.resources.memory_bytes)} memory; processes: the kubelet's podPidsLimit",
            network=f"NetworkPolicy: only the proxy Pod {proxy}; DNS answers NXDOMAIN for every name",
        ),
        "",
        *policy_lines(plan),
        "",
        "TLS",
        f"  a new CA is made for this bottle; its private key is only in the Secret {proxy}, mounted only "
        "into the proxy container",
        "  upstream trust: public roots" + (f" + {plan.egress.upstream_ca}" if plan.egress.upstream_ca else ""),
        "",
        scanner_line(plan) + f"; a sidecar in {proxy} on its loopback only",
        "",
        f"Kubernetes objects (namespace {kplan.namespace}, "
        f"{'context ' + kplan.context if kplan.context else 'current context'}; created in this order)",
    ]
    width = max(len(o.kind) for o in kplan.objects)
    for obj in kplan.objects:
        lines.append(f"  {obj.kind:<{width}}  {obj.name}")
        lines.append(f"  {'':<{width}}    {obj.purpose}")
    lines += [
        "  the exact bodies: --format=json",
        "",
        "Teardown (on exit, error, Ctrl-C, SIGTERM or SIGHUP)",
        "  delete Pod " + ", ".join(pod.name for pod in kplan.pods) + " (grace period 1 s)",
        f"  delete ConfigMap {kplan.parent.name} (foreground: the objects it owns go first)",
        f"  wait until no object labelled {kplan.selector} is left",
    ]
    lines += missing_credentials_lines(plan)
    return "\n".join(lines) + "\n"
