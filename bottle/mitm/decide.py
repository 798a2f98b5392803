"""Pure policy decisions over plain data. No mitmproxy imports: the addon translates."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bottle.mitm.policy import Policy, Route, Rule

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


def normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_authority(authority: str) -> str:
    """Host part of `host[:port]` or `[v6][:port]`, normalized."""
    authority = authority.strip()
    if authority.startswith("["):
        return normalize_host(authority[: authority.find("]") + 1] if "]" in authority else authority)
    if authority.count(":") == 1:
        authority = authority.rsplit(":", 1)[0]
    return normalize_host(authority)


def host_matches(pattern: str, host: str) -> bool:
    """Exact match, or `*.suffix`: any depth of subdomain of suffix, never the apex."""
    host = normalize_host(host)
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(normalize_host(host).split("%", 1)[0])
    except ValueError:
        return False
    return True


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


def rules_for_host(policy: Policy, host: str) -> list[Rule]:
    return [r for r in policy.rules if host_matches(r.host, host)]


def find_rule(policy: Policy, host: str, port: int, method: str, path: str) -> Rule | None:
    for rule in rules_for_host(policy, host):
        if port in rule.ports and _method_path_match(rule.methods, rule.paths, method, path):
            return rule
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


def _method_path_match(
    methods: Sequence[str] | None, paths: Sequence[str] | None, method: str, path: str
) -> bool:
    if methods is not None and method.upper() not in methods:
        return False
    if paths is None:
        return True
    clean = _path_for_matching(path)
    return clean is not None and any(clean.startswith(p) for p in paths)


def _path_for_matching(path: str) -> str | None:
    """Path without query, percent-decoded; None when it has dot segments (could escape a prefix)."""
    raw = path.split("?", 1)[0].split("#", 1)[0]
    decoded = unquote(raw)
    if any(seg in (".", "..") for seg in decoded.split("/")) or "\\" in decoded:
        return None
    return decoded


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


def find_route(policy: Policy, host: str, method: str, path: str) -> Route | None:
    for route in policy.routes:
        if host_matches(route.host, host) and _method_path_match(route.methods, route.paths, method, path):
            return route
    return None


def credential_header_name(route: Route) -> str:
    return route.header if route.scheme == "header" and route.header else "authorization"


def check_credentials(
    policy: Policy,
    route: Route | None,
    scheme: str,
    headers: Iterable[tuple[str, str]],
    url: str,
) -> Verdict:
    """Placeholders only travel to their own route; routed requests carry only the placeholder."""
    headers = list(headers)
    for other in policy.routes:
        if other is route:
            continue
        if other.placeholder in url or any(other.placeholder in v for _, v in headers):
            return block(403, f"credential placeholder for {other.token_ref} sent outside its route {other.id}", other.id)
    if route is None:
        return ALLOW
    if scheme != "https":
        return block(403, f"credential route {route.id} requires https", route.id)
    name = credential_header_name(route)
    for key, value in headers:
        if key.lower() == name and not _carries_placeholder(value, route.placeholder):
            return block(
                403,
                f"{name} header on credential route {route.id} is not bottle's placeholder for {route.token_ref}",
                route.id,
            )
    return ALLOW


def _carries_placeholder(value: str, placeholder: str) -> bool:
    parts = value.strip().split()
    if not parts:
        return False
    if parts[-1] == placeholder and len(parts) <= 2:
        return True
    if len(parts) == 2 and parts[0].lower() == "basic":
        try:
            decoded = base64.b64decode(parts[1], validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return False
        return placeholder in decoded.split(":")
    return False


class CredentialMissingError(Exception):
    pass


def credential_header(route: Route, env: Mapping[str, str]) -> tuple[str, str]:
    """The header bottle injects; raises CredentialMissingError naming only the variable."""
    value = env.get(route.token_ref, "")
    if not value:
        raise CredentialMissingError(f"credential {route.token_ref} not provided")
    if route.scheme == "bearer":
        return "authorization", f"Bearer {value}"
    if route.scheme == "token":
        return "authorization", f"token {value}"
    if route.scheme == "basic":
        raw = f"{route.username}:{value}" if route.username is not None else value
        return "authorization", "Basic " + base64.b64encode(raw.encode()).decode("ascii")
    return credential_header_name(route), value


def credential_scrubs(route: Route, env: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """(real, placeholder) pairs an answer to a credentialed request must not carry back.

    An upstream that reflects request headers (debug endpoints, error pages) would otherwise
    hand the agent the real credential: the value itself, and for `basic` the base64 form
    that was sent.
    """
    _, sent = credential_header(route, env)
    placeholder = route.placeholder.encode()
    pairs = [(env[route.token_ref].encode(), placeholder)]
    if route.scheme == "basic":
        pairs.append((sent.split(" ", 1)[1].encode(), placeholder))
    return pairs


class Scrubber:
    """Replace secrets in a stream of chunks; a secret split across chunks is still caught.

    The last len(longest secret)-1 bytes are held back until the next chunk (or the final
    b"") shows whether they start a secret.
    """

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        longest_first = sorted({real for real, _ in pairs}, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(real) for real in longest_first))
        self._placeholders = dict(pairs)
        self._keep = len(longest_first[0]) - 1
        self._carry = b""
        self.count = 0

    def replace(self, data: bytes) -> bytes:
        """Scrub one complete value (a header, the end of a stream)."""
        out, end = self._replace_before(data, len(data))
        return out + data[end:]

    def feed(self, chunk: bytes) -> bytes:
        """Scrubbed bytes safe to send now; b"" flushes what was held back."""
        data, self._carry = self._carry + chunk, b""
        if not chunk:
            return self.replace(data)
        # Every secret starting before `limit` ends inside `data`, so the longest one there
        # is known; a match starting later waits for the next chunk.
        limit = max(0, len(data) - self._keep)
        out, end = self._replace_before(data, limit)
        cut = max(end, limit)
        self._carry = data[cut:]
        return out + data[end:cut]

    def _replace_before(self, data: bytes, limit: int) -> tuple[bytes, int]:
        parts, end = [], 0
        for match in self._pattern.finditer(data):
            if match.start() >= limit:
                break
            parts += [data[end:match.start()], self._placeholders[match.group()]]
            end = match.end()
            self.count += 1
        return b"".join(parts), end


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
