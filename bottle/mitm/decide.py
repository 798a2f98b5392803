"""Access decisions over plain data: who may connect, to which host, port, method and path.

No mitmproxy imports: the request pipeline translates flows into these arguments and the
verdicts into responses. Discover mode turns a refusal into an allowed `would_block`
verdict here, in one place; IP literals and misdirected requests stay refused in every mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from bottle.mitm.policy import (
    AllowRule,
    Policy,
    host_matches,
    is_ip_literal,
    method_matches,
    normalize_host,
    path_matches,
    split_authority,
)

_METADATA_IPS = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


@dataclass(frozen=True)
class Verdict:
    """allowed=False means answer `status`; would_block marks discover/audit passes."""

    allowed: bool
    status: int
    rule_id: str | None
    reason: str
    would_block: bool = False


ALLOW = Verdict(True, 200, None, "")


def block(status: int, reason: str, rule_id: str | None = None) -> Verdict:
    return Verdict(False, status, rule_id, reason)


def is_permitted_upstream_ip(ip: str, allow_private: bool) -> bool:
    """Global unicast only, unless the rule allows private upstreams; metadata never."""
    try:
        addr = ipaddress.ip_address(normalize_host(ip).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr.sixtofour is not None or addr.teredo is not None:
            return False
    if addr in _METADATA_IPS or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return False
    if allow_private:
        return True
    return addr.is_global and not addr.is_link_local


def normalize_client_ip(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def check_client(policy: Policy, ip: str) -> Verdict:
    if normalize_client_ip(ip) in policy.clients:
        return ALLOW
    return block(403, f"client {ip} is not this bottle's agent")


def rules_for_host(policy: Policy, host: str) -> list[AllowRule]:
    return [r for r in policy.allow if host_matches(r.host, host)]


def find_rule(policy: Policy, host: str, port: int, method: str, path: str) -> AllowRule | None:
    """The rule allowing a decrypted request; a passthrough rule allows none (it allows a
    tunnel, and only when it is not decrypted)."""
    for rule in rules_for_host(policy, host):
        if rule.tls == "passthrough":
            continue
        if port in rule.ports and method_matches(rule.methods, method) and path_matches(rule.paths, path):
            return rule
    return None


def passthrough_rule(policy: Policy, host: str, port: int) -> AllowRule | None:
    """The rule a TLS connection to host:port passes through undecrypted: only when every
    rule for host:port says passthrough (the manifest allows no mix)."""
    rules = [r for r in rules_for_host(policy, host) if port in r.ports]
    if rules and all(r.tls == "passthrough" for r in rules):
        return rules[0]
    return None


def _discover(policy: Policy, verdict: Verdict) -> Verdict:
    if policy.mode == "discover" and not verdict.allowed:
        return Verdict(True, 200, verdict.rule_id, verdict.reason, would_block=True)
    return verdict


def check_ip_literal(host: str) -> Verdict:
    if is_ip_literal(host):
        return block(403, f"IP literal destination {normalize_host(host)} is not allowed; name the host")
    return ALLOW


def check_connect(policy: Policy, host: str, port: int) -> Verdict:
    """CONNECT target check; IP literals stay blocked even in discover mode."""
    if not (v := check_ip_literal(host)).allowed:
        return v
    rules = rules_for_host(policy, host)
    if not rules:
        return _discover(policy, block(403, f"no rule allows host {normalize_host(host)}"))
    if not any(port in r.ports for r in rules):
        return _discover(
            policy,
            block(403, f"port {port} is not allowed for host {normalize_host(host)} by {rules[0].id}", rules[0].id),
        )
    return ALLOW


def check_request(policy: Policy, host: str, port: int, method: str, path: str) -> Verdict:
    """Host, port, method and path-prefix rules; allowed verdicts carry the matching rule id."""
    if not (v := check_connect(policy, host, port)).allowed or v.would_block:
        return v
    if rule := find_rule(policy, host, port, method, path):
        return Verdict(True, 200, rule.id, "")
    candidates = [r for r in rules_for_host(policy, host) if port in r.ports]
    shown = redact_query(path)
    return _discover(
        policy,
        block(403, f"{method} {shown} is not allowed for {normalize_host(host)} by {candidates[0].id}", candidates[0].id),
    )


def check_fronting(connect_host: str, sni: str | None, host_header: str | None) -> Verdict:
    """CONNECT target, TLS SNI and Host/:authority must name the same host."""
    names = {"CONNECT target": normalize_host(connect_host)}
    if sni:
        names["TLS SNI"] = normalize_host(sni)
    if host_header:
        names["Host"] = split_authority(host_header)
    if len(set(names.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in names.items())
        return block(421, f"misdirected request: {shown} do not agree")
    return ALLOW


def redact_query(path: str) -> str:
    """Keep query keys, replace every value with REDACTED."""
    if "?" not in path:
        return path
    base, query = path.split("?", 1)
    out = []
    for part in query.split("&"):
        if "=" in part:
            out.append(part.split("=", 1)[0] + "=REDACTED")
        else:
            out.append(part)
    return base + "?" + "&".join(out)


def upstream_allowance(policy: Policy, host: str, port: int | None = None) -> bool | None:
    """None: bottle must not connect to host at all; else whether private addresses are allowed."""
    rules = [r for r in rules_for_host(policy, host) if port is None or port in r.ports]
    if rules:
        return any(r.private_upstream for r in rules)
    return False if policy.mode == "discover" else None


def scanner_target(policy: Policy) -> tuple[str, int]:
    parts = urlsplit(policy.scanner.url)
    return normalize_host(parts.hostname or ""), parts.port or 80
