"""The human-readable preflight that `bottle start --dry-run` prints."""

from __future__ import annotations

import shlex

from bottle.backend.docker.plan import (
    DockerBottlePlan,
    connect_argv,
    create_argv,
    network_create_argv,
    run_argv,
)


def _list(values: tuple[str, ...] | None, every: str) -> str:
    return ", ".join(values) if values else every


def _network_lines(dplan: DockerBottlePlan) -> list[str]:
    if dplan.capture is None:
        return ["  network   internal only: its one way out is the egress proxy; DNS answers NXDOMAIN for every name"]
    ports = ", ".join(str(p.port) for p in dplan.capture.ports)
    return [
        "  network   internal only: its one way out is the egress proxy, by proxy settings or captured",
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
    lines = [
        f"bottle {plan.bottle_id}  (manifest {plan.manifest})",
        "",
        "Agent",
        f"  image     {plan.agent.image}",
        f"  command   {shlex.join(plan.agent.command)}",
        f"  user      {plan.agent.user}, all capabilities dropped, no-new-privileges",
        f"  workdir   {plan.agent.workdir}"
        + (f"  (host {plan.agent.workspace} mounted read-write)" if plan.agent.workspace else "  (no host directory mounted)"),
        f"  limits    {plan.agent.resources.cpus:g} CPUs, {plan.agent.resources.memory} memory, "
        f"{plan.agent.resources.pids} processes",
        *_network_lines(dplan),
        "",
        f"Egress ({plan.egress.mode}: "
        + ("anything not allowed below is blocked)" if plan.egress.mode == "enforce"
           else "nothing is blocked by these rules, what they would block is logged; secrets are still blocked)"),
    ]
    if not plan.egress.allow:
        lines.append("  (no allow rules: every request is refused)")
    for rule in plan.egress.allow:
        extras = []
        if rule.private_upstream:
            extras.append("private upstream addresses allowed")
        if rule.tls == "passthrough":
            extras.append("TLS passthrough: not decrypted, nothing scanned")
        elif not rule.scan_body:
            extras.append("bodies not scanned")
        scope = ("" if rule.tls == "passthrough" else
                 f"methods {_list(rule.methods, 'any')}; paths {_list(rule.paths, 'any')}; ")
        lines.append(
            f"  {rule.id:<16} {rule.host}  {scope}ports {', '.join(map(str, rule.ports))}"
            + (f"  [{'; '.join(extras)}]" if extras else "")
        )
    lines += ["", "Credentials (injected by the proxy; the agent only holds a placeholder)"]
    if not plan.egress.routes:
        lines.append("  (none)")
    for route in plan.egress.routes:
        header = route.header_name
        state = "present" if route.token_ref in plan.egress.present_token_refs else "NOT SET in the environment"
        lines.append(
            f"  {route.id:<16} {route.host}  {header} ({route.scheme}) from ${route.token_ref} [{state}]"
            f"  methods {_list(route.methods, 'any')}; paths {_list(route.paths, 'any')}"
        )
    lines += [
        "",
        "TLS",
        "  a new CA is made for this bottle; its private key exists only in the proxy's memory-backed /run/bottle",
        "  upstream trust: public roots" + (f" + {plan.egress.upstream_ca}" if plan.egress.upstream_ca else ""),
        "",
        f"Scanner  {plan.scanner.image} (mode {plan.scanner.mode}); every decrypted request is scanned; "
        "an unreachable scanner blocks",
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
    lines += _capture_lines(dplan)
    lines += ["", "Teardown (on exit, error, Ctrl-C, SIGTERM or SIGHUP)"]
    if dplan.capture is not None:
        lines.append(f"  read what the capture rejected into the egress log ({dplan.capture.report.name}, gone on exit)")
        lines.append(f"    $ {shlex.join([docker, *run_argv(dplan.capture.report)])}")
    for kind, name in dplan.teardown:
        lines.append(f"  remove {kind:<9} {name}")
    if plan.missing_credentials:
        lines += ["", "Warning: not set in the environment: " + ", ".join(plan.missing_credentials)
                  + ". Requests on those routes will be refused."]
    return "\n".join(lines) + "\n"
