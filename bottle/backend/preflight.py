"""The parts of the dry-run's text that say what a bottle is and allows, the same on every backend."""

from __future__ import annotations

import shlex

from bottle.plan import BottlePlan


USER_SOURCE_TEXT = {
    "manifest": "agent.user",
    "workspace owner": "the workspace's owner",
    "default": "the default",
}


def workspace_text(plan: BottlePlan) -> str:
    """The host directory mounted at workdir, how, and whose it is."""
    agent = plan.agent
    if agent.workspace is None:
        return "(no host directory mounted)"
    owner = f", owned by {agent.workspace_owner}" if agent.workspace_owner else ""
    return f"(host {agent.workspace} mounted {'read-only' if agent.workspace_read_only else 'read-write'}{owner})"


def agent_lines(plan: BottlePlan, *, user: str, workdir: str, limits: str, network: str) -> list[str]:
    """The heading and the Agent section; the backend says how it confines the agent."""
    home = ([f"  home      {plan.agent.home}  (its own, for uid {plan.agent.user.split(':')[0]}, "
             "which has no home in the image)"] if plan.agent.home else [])
    return [
        f"bottle {plan.bottle_id}  (manifest {plan.manifest})",
        "",
        "Agent",
        f"  image     {plan.agent.image}",
        f"  command   {shlex.join(plan.agent.command)}",
        f"  user      {plan.agent.user} ({USER_SOURCE_TEXT[plan.agent.user_source]}), {user}",
        *home,
        f"  workdir   {plan.agent.workdir}  {workdir}",
        f"  limits    {plan.agent.resources.cpus:g} CPUs, {limits}",
        f"  network   {network}",
    ]


def _list(values: tuple[str, ...] | None, every: str) -> str:
    return ", ".join(values) if values else every


def policy_lines(plan: BottlePlan) -> list[str]:
    """The egress rules and the credential routes, one line each."""
    lines = [
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
        state = "present" if route.token_ref in plan.egress.present_token_refs else "NOT SET in the environment"
        lines.append(
            f"  {route.id:<16} {route.host}  {route.header_name} ({route.scheme}) from ${route.token_ref} [{state}]"
            f"  methods {_list(route.methods, 'any')}; paths {_list(route.paths, 'any')}"
        )
    return lines


def scanner_line(plan: BottlePlan) -> str:
    return (f"Scanner  {plan.scanner.image} (mode {plan.scanner.mode}); every decrypted request is scanned; "
            "an unreachable scanner blocks")


def missing_credentials_lines(plan: BottlePlan) -> list[str]:
    if not plan.missing_credentials:
        return []
    return ["", "Warning: not set in the environment: " + ", ".join(plan.missing_credentials)
            + ". Requests on those routes will be refused."]
