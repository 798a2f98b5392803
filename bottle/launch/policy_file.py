"""The proxy's policy file, made from a plan plus what is only known at launch.

The format is the contract in bottle/mitm/policy.py: this module fills its types in, and
`Policy.to_json()` writes the very document the proxy's `parse_policy()` reads back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bottle.errors import StartError
from bottle.launch.secrets import LaunchSecrets
from bottle.mitm.policy import Dns, Listen, Policy, ScannerConfig, Transparent
from bottle.plan import CAPTURE_DNS_ADDRESS, DNS_PORT, PROXY_PORT, BottlePlan

SCANNER_TIMEOUT_SECONDS = 10.0
SCANNER_MAX_BODY_BYTES = 8 * 1024 * 1024


def build_policy(
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
    dns_port: int = DNS_PORT,
) -> Policy:
    captured = plan.egress.captured_ports
    return Policy(
        bottle=plan.bottle_id,
        mode=plan.egress.mode,
        listen=Listen(host=listen_host, port=listen_port),
        clients=tuple(clients),
        allow=plan.egress.allow,
        routes=plan.egress.routes,
        placeholders={ref: placeholders[ref] for ref in plan.egress.token_refs},
        scanner=ScannerConfig(url=scanner_url, token=scanner_token, mode=plan.scanner.mode,
                              timeout_seconds=SCANNER_TIMEOUT_SECONDS, max_body_bytes=SCANNER_MAX_BODY_BYTES,
                              responses=plan.scanner.responses),
        upstream_ca=upstream_ca_path,
        dns=Dns(host=dns_host, port=dns_port) if dns_host else None,
        git=plan.git,
        github_deny=plan.github_deny,
        transparent=Transparent(ports=captured, dns_address=CAPTURE_DNS_ADDRESS) if captured else None,
    )


def render_policy(plan: BottlePlan, **launch_facts) -> str:
    """The policy JSON the egress proxy enforces."""
    return build_policy(plan, **launch_facts).to_json()


def proxy_files(plan: BottlePlan, secrets: LaunchSecrets, *, agent_ip: str, proxy_ip: str, scanner_url: str,
                run_dir: str) -> dict[str, bytes]:
    """What the proxy's `bottle.mitm.receive` takes once both addresses exist: the policy
    (the agent as its only client; the proxy's own address for its listener and its DNS)
    and the manifest's upstream CA, if any."""
    upstream_ca = plan.egress.upstream_ca
    files = {
        "policy.json": render_policy(
            plan,
            clients=[agent_ip],
            listen_host=proxy_ip,
            listen_port=PROXY_PORT,
            scanner_url=scanner_url,
            scanner_token=secrets.scanner_token,
            placeholders=secrets.placeholders,
            upstream_ca_path=f"{run_dir}/upstream-ca.pem" if upstream_ca else None,
            dns_host=proxy_ip,
        ).encode(),
    }
    if upstream_ca:
        files["upstream-ca.pem"] = read_upstream_ca(upstream_ca)
    return files


def read_upstream_ca(path: str) -> bytes:
    """The manifest's `egress.upstream_ca`, shipped to the proxy as upstream-ca.pem."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StartError(f"egress.upstream_ca: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise StartError(f"egress.upstream_ca: {path} holds no PEM certificate")
    return data
