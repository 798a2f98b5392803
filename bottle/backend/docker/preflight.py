"""The human-readable preflight that `bottle start --dry-run` prints for Docker."""

from __future__ import annotations

import shlex

from bottle.backend.docker.plan import (
    DockerBottlePlan,
    connect_argv,
    create_argv,
    network_create_argv,
    run_argv,
)
from bottle.backend.preflight import (
    agent_lines,
    missing_credentials_lines,
    policy_lines,
    scanner_line,
    workspace_text,
)


def _network(dplan: DockerBottlePlan) -> str:
    if dplan.capture is None:
        return "internal only: its one way out is the egress proxy; DNS answers NXDOMAIN for every name"
    return "internal only: its one way out is the egress proxy, by proxy settings or captured"


def _transparent_lines(dplan: DockerBottlePlan) -> list[str]:
    if dplan.capture is None:
        return []
    ports = ", ".join(str(p.port) for p in dplan.capture.ports)
    return [
        f"  capture   transparent: every TCP connection to ports {ports} goes to the proxy, which takes the host from "
        "the TLS SNI or Host header; DNS to any server is the proxy's; every other packet is rejected "
        "(and counted into the egress log)",
        f"  dns       names the policy allows are answered {dplan.capture.dns_address}, every other name NXDOMAIN",
    ]


def _capture_lines(dplan: DockerBottlePlan) -> list[str]:
    capture = dplan.capture
    if capture is None:
        return []
    ports = ", ".join(f"{p.port} -> proxy {p.listen}" for p in capture.ports)
    helper = capture.install
    return [
        f"  helper     {helper.name}  (installs the transparent capture in the agent's network namespace: "
        f"root with NET_ADMIN only, gone before the agent command; ports {ports})",
        f"    $ {shlex.join([dplan.engine, *run_argv(helper, stdin=True)])} <<'EOF'",
        *(f"    {line}" for line in capture.ruleset.rstrip("\n").expandtabs(4).splitlines()),
        "    EOF",
    ]


def render_preflight(dplan: DockerBottlePlan, *, note: str | None = None) -> str:
    """`note` says how the engine was chosen when that was a guess."""
    plan = dplan.bottle
    docker = dplan.engine
    agent = dplan.container("agent")
    lines = [
        *agent_lines(
            plan,
            user="all capabilities dropped, no-new-privileges",
            workdir=workspace_text(plan),
            limits=f"{agent.memory} memory, {plan.agent.resources.pids} processes",
            network=_network(dplan),
        ),
        *_transparent_lines(dplan),
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
        restart = "; restarted by the engine if its process dies" if container.restart else ""
        lines.append(f"  container  {container.name}  ({container.role}{restart})")
        lines.append(f"    $ {shlex.join([docker, *create_argv(container)])}")
        for argv in connect_argv(container):
            lines.append(f"    $ {shlex.join([docker, *argv])}")
    lines += _capture_lines(dplan)
    lines += ["", "Teardown (on exit, error, Ctrl-C, SIGTERM or SIGHUP)"]
    if dplan.capture is not None:
        lines.append(f"  read what the capture rejected into the egress log ({dplan.capture.report.name}, gone on exit)")
        lines.append(f"    $ {shlex.join([docker, *run_argv(dplan.capture.report)])}")
    for kind, name in dplan.teardown:
        lines.append(f"  remove {kind:<9} {name}")
    lines += missing_credentials_lines(plan)
    return "\n".join(lines) + "\n"
