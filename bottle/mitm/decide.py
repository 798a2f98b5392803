"""Access decisions over plain data: who may connect, to which host, port, method and path.

No mitmproxy imports: the request pipeline translates flows into these arguments and the
verdicts into responses. Discover mode turns a refusal into an allowed `would_block`
verdict here, in one place; IP literals and misdirected requests stay refused in every mode.
"""

from __future__ import annotations

import ipaddress
import re
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
from bottle.mitm.redact import loggable_host, loggable_method, loggable_path, shannon_entropy

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
    """CONNECT target check; IP literals and the scanner stay refused even in discover mode."""
    if not (v := _check_destination(policy, host)).allowed:
        return v
    shown = loggable_host(normalize_host(host))
    rules = rules_for_host(policy, host)
    if not rules:
        return _discover(policy, block(403, f"no rule allows host {shown}"))
    if not any(port in r.ports for r in rules):
        return _discover(policy, block(403, f"port {port} is not allowed for host {shown} by {rules[0].id}",
                                       rules[0].id))
    if (refusal := _labels(policy, host, rules)) is not None:
        return refusal
    return ALLOW


def check_name(policy: Policy, host: str) -> Verdict:
    """Whether the proxy's DNS answers a name (transparent capture): what check_connect
    decides without a port. An allowed verdict names the first rule for the host."""
    if not (v := _check_destination(policy, host)).allowed:
        return v
    rules = rules_for_host(policy, host)
    if not rules:
        return _discover(policy, block(403, f"no rule allows host {loggable_host(normalize_host(host))}"))
    if (refusal := _labels(policy, host, rules)) is not None:
        return refusal
    return Verdict(True, 200, rules[0].id, "")


def _check_destination(policy: Policy, host: str) -> Verdict:
    if not (v := check_ip_literal(host)).allowed:
        return v
    if normalize_host(host) == scanner_target(policy)[0]:
        return block(403, "the scanner is not a destination")
    return ALLOW


def _labels(policy: Policy, host: str, rules: list[AllowRule]) -> Verdict | None:
    if any(_label_check(r, host) is None for r in rules):
        return None
    rule = rules[0]
    shown = loggable_host(normalize_host(host))
    return _discover(policy, block(403, f"host {shown} under {rule.host}: {_label_check(rule, host)}", rule.id))


# Past this many labels under a wildcard, a host name is treated as carrying data.
MAX_WILDCARD_LABELS = 4
LABEL_CHECK_OFF = 6.0  # no label is above this entropy; max_label_entropy >= it turns the check off
_SEPARATORS = re.compile(r"[-_]")
_HEX = re.compile(r"[0-9a-f]+")


def encoded_labels(subdomain: str, max_entropy: float) -> str | None:
    """Why the labels a wildcard lets the agent choose look like encoded data, or None.

    Data hidden in host names (`<hex of a secret>.exfil.example.com`) shows as long runs
    of hex digits, or long runs with more entropy per character than names have, or many
    labels. Each run between dashes is judged on its own, so `my-company-artifacts` is a name.
    """
    if max_entropy >= LABEL_CHECK_OFF:
        return None
    labels = subdomain.split(".")
    if len(labels) > MAX_WILDCARD_LABELS:
        return f"{len(labels)} labels look like encoded data (at most {MAX_WILDCARD_LABELS} under a wildcard)"
    for label in labels:
        for run in _SEPARATORS.split(label):
            if len(run) < 16:
                continue
            if _HEX.fullmatch(run):
                return f"a label of {len(run)} hex digits looks like encoded data"
            if (entropy := shannon_entropy(run)) > max_entropy:
                return (f"a label of {len(run)} characters with {entropy:.2f} bits of entropy per character looks "
                        f"like encoded data (max_label_entropy {max_entropy:g})")
    return None


def _label_check(rule: AllowRule, host: str) -> str | None:
    if not rule.host.startswith("*."):
        return None
    host = normalize_host(host)
    return encoded_labels(host[: len(host) - len(rule.host) + 1], rule.max_label_entropy)


def check_request(policy: Policy, host: str, port: int, method: str, path: str) -> Verdict:
    """Host, port, method and path-prefix rules; allowed verdicts carry the matching rule id."""
    if not (v := check_connect(policy, host, port)).allowed or v.would_block:
        return v
    if rule := find_rule(policy, host, port, method, path):
        return Verdict(True, 200, rule.id, "")
    candidates = [r for r in rules_for_host(policy, host) if port in r.ports]
    return _discover(policy, block(
        403, f"{loggable_method(method)} {loggable_path(path)} is not allowed for "
             f"{loggable_host(normalize_host(host))} by {candidates[0].id}", candidates[0].id))


def authority_host(authority: str) -> str | None:
    return split_authority(authority) if authority else None


def check_target(host: str, port: int, scheme: str, authority: str, path: str, method: str) -> Verdict:
    """The request target names the connection's host (RFC 9112 3.2.2: servers route on an
    absolute-form target, and on HTTP/2's :authority and :path, whatever the Host header)."""
    if not (path.startswith("/") or (path == "*" and method.upper() == "OPTIONS")):
        return block(421, "misdirected request: the request target is not origin-form (a path starting with /)")
    if authority:
        named = split_authority(authority)
        named_port = _authority_port(authority) or (443 if scheme == "https" else 80)
        if (named, named_port) != (normalize_host(host), port):
            return block(421, f"misdirected request: the request names {loggable_host(named)}:{named_port} but "
                              f"its connection is to {loggable_host(normalize_host(host))}:{port}")
    return ALLOW


def _authority_port(authority: str) -> int | None:
    tail = authority.rsplit("]", 1)[-1]
    if ":" in tail:
        digits = tail.rsplit(":", 1)[1]
        return int(digits) if digits.isdigit() else -1
    return None


def check_fronting(connect_host: str | None, sni: str | None, host_header: str | None) -> Verdict:
    """CONNECT target, TLS SNI and Host/:authority must name the same host. A transparently
    captured connection has no CONNECT target (None): its SNI and Host must agree."""
    names = {} if connect_host is None else {"CONNECT target": normalize_host(connect_host)}
    if sni:
        names["TLS SNI"] = normalize_host(sni)
    if host_header:
        names["Host"] = split_authority(host_header)
    if len(set(names.values())) > 1:
        shown = ", ".join(f"{k} {loggable_host(v)}" for k, v in names.items())
        return block(421, f"misdirected request: {shown} do not agree")
    return ALLOW


def transparent_destination(tls: bool, sni: str | None, host_header: str | None) -> tuple[Verdict, str | None]:
    """Where a transparently captured connection goes: the host its TLS SNI names, or for
    plain HTTP its Host header. The address the agent dialled is never used, so a connection
    that names no host has nowhere to go."""
    if tls:
        if not sni:
            return block(421, "misdirected request: a captured TLS connection must name its host in the TLS "
                              "SNI (bottle never connects to the address the agent dialled)"), None
        return ALLOW, normalize_host(sni)
    if not host_header or not split_authority(host_header):
        return block(421, "misdirected request: a captured HTTP request must name its host in the Host "
                          "header (bottle never connects to the address the agent dialled)"), None
    return ALLOW, split_authority(host_header)


def upstream_allowance(policy: Policy, host: str, port: int | None = None) -> bool | None:
    """None: bottle must not connect to host at all; else whether private addresses are allowed."""
    rules = [r for r in rules_for_host(policy, host) if port is None or port in r.ports]
    if rules:
        return any(r.private_upstream for r in rules)
    return False if policy.mode == "discover" else None


def scanner_target(policy: Policy) -> tuple[str, int]:
    parts = urlsplit(policy.scanner.url)
    return normalize_host(parts.hostname or ""), parts.port or 80
