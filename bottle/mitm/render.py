"""Host side: render the proxy's policy file from a plan plus what is known at launch."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from bottle.plan import BottlePlan

POLICY_VERSION = 1
SCANNER_TIMEOUT_SECONDS = 10
SCANNER_MAX_BODY_BYTES = 8 * 1024 * 1024


def render_policy(
    plan: BottlePlan,
    *,
    clients: Sequence[str],
    listen_host: str,
    listen_port: int,
    scanner_url: str,
    scanner_token: str,
    placeholders: Mapping[str, str],
    upstream_ca_path: str | None,
    dns_host: str | None,
    dns_port: int = 53,
) -> str:
    """The policy JSON the egress proxy enforces (format: bottle/mitm/policy.py)."""
    document = {
        "version": POLICY_VERSION,
        "bottle": plan.bottle_id,
        "mode": plan.egress.mode,
        "listen": {"host": listen_host, "port": listen_port},
        "clients": list(clients),
        "rules": [
            {
                "id": rule.id,
                "host": rule.host,
                "methods": list(rule.methods) if rule.methods else None,
                "paths": list(rule.paths) if rule.paths else None,
                "ports": list(rule.ports),
                "private_upstream": rule.private_upstream,
                "scan_body": rule.scan_body,
            }
            for rule in plan.egress.rules
        ],
        "routes": [
            {
                "id": route.id,
                "host": route.host,
                "methods": list(route.methods) if route.methods else None,
                "paths": list(route.paths) if route.paths else None,
                "scheme": route.scheme,
                "header": route.header,
                "username": route.username,
                "token_ref": route.token_ref,
                "placeholder": placeholders[route.token_ref],
            }
            for route in plan.egress.routes
        ],
        "scanner": {
            "url": scanner_url,
            "token": scanner_token,
            "mode": plan.scanner.mode,
            "timeout_seconds": SCANNER_TIMEOUT_SECONDS,
            "max_body_bytes": SCANNER_MAX_BODY_BYTES,
        },
        "upstream_ca": upstream_ca_path,
        "dns": {"host": dns_host, "port": dns_port} if dns_host else None,
        "git": _git(plan),
        "github": {"deny": [dataclasses.asdict(d) for d in plan.github_deny]} if plan.github_deny else None,
    }
    return json.dumps(document, indent=2) + "\n"


def _git(plan: BottlePlan) -> dict | None:
    git = plan.git
    if git is None:
        return None
    return {
        "repositories": [dataclasses.asdict(r) for r in git.repositories],
        "protected_branches": list(git.protected_branches),
        "push_branches": list(git.push_branches) if git.push_branches is not None else None,
        "allow_force_push": git.allow_force_push,
        "allow_branch_deletion": git.allow_branch_deletion,
    }
