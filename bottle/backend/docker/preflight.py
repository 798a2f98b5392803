"""The human-readable preflight that `bottle start --dry-run` prints for Docker."""

from __future__ import annotations

import shlex

from bottle.backend.docker.plan import DockerBottlePlan, connect_argv, create_argv, network_create_argv
from bottle.backend.preflight import agent_lines, missing_credentials_lines, policy_lines, scanner_line


def render_preflight(dplan: DockerBottlePlan, *, note: str | None = None) -> str:
    """`note` says how the engine was chosen when that was a guess."""
    plan = dplan.bottle
    docker = dplan.engine
    agent = dplan.container("agent")
    lines = [
        *agent_lines(
            plan,
            user="all capabilities dropped, no-new-privileges",
            workdir=f"(host {plan.agent.workspace} mounted read-write)" if plan.agent.workspace
            else "(no host directory mounted)",
            limits=f"{agent.memory} memory, {plan.agent.resources.pids} processes",
            network="internal only: its one way out is the egress proxy; DNS answers NXDOMAIN for every name",
        ),
        "",
        *policy_lines(plan),
        "",
        "TLS",
        "  a new CA is made for this bottle; its private key exists only in the proxy's memory-backed /run/bottle",
        "  upstream trust: public roots" + (f" + {plan.egress.upstream_ca}" if plan.egress.upstream_ca else ""),
        "",
        scanner_line(plan),
        "",
        f"{'Podman' if docker == 'podman' else 'Docker'} resources (created in this order)",
    ]
    if note:
        lines.append(f"  ({note})")
    for network in dplan.networks:
        kind = "internal, no gateway" if network.internal else "bridge with a route out"
        verb = "create" if network.create else "use existing"
        lines.append(f"  network    {network.name}  ({verb}; {kind})")
        if network.create:
            lines.append(f"    $ {shlex.join([docker, *network_create_argv(network)])}")
    for volume in dplan.volumes:
        lines.append(f"  volume     {volume.name}")
    for container in dplan.containers:
        lines.append(f"  container  {container.name}  ({container.role})")
        lines.append(f"    $ {shlex.join([docker, *create_argv(container)])}")
        for argv in connect_argv(container):
            lines.append(f"    $ {shlex.join([docker, *argv])}")
    lines += ["", "Teardown (on exit, error, Ctrl-C, SIGTERM or SIGHUP)"]
    for kind, name in dplan.teardown:
        lines.append(f"  remove {kind:<9} {name}")
    lines += missing_credentials_lines(plan)
    return "\n".join(lines) + "\n"
