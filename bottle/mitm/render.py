"""Host side: render the proxy's policy file from a plan plus what is known at launch."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from bottle.plan import BottlePlan, git_document, github_document

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
        "rules": [dataclasses.asdict(rule) for rule in plan.egress.rules],
        "routes": [
            {
                **{k: v for k, v in dataclasses.asdict(route).items() if k != "token_present"},
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
        "git": git_document(plan),
        "github": github_document(plan),
    }
    return json.dumps(document, indent=2) + "\n"

