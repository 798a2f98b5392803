"""The policy contract between the host and the egress proxy, defined once.

The host builds a `Policy` from its plan and writes it with `Policy.to_json()`; the proxy
reads it back with `parse_policy()`, which validates strictly because the file crosses a
trust boundary. Both sides use the same types, the same patterns and the same matchers
(`host_matches`, `is_ip_literal`, `clean_path`), so what the manifest accepts, what the
dry-run shows and what the proxy enforces cannot drift apart.

Standard library only: this module runs inside the proxy image, and the host imports it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

POLICY_VERSION = 2
MODES = ("enforce", "discover")
SCANNER_MODES = ("block", "audit")
RESPONSE_SCAN_MODES = ("off", "warn", "block")
SCHEMES = ("bearer", "token", "basic", "header")
GIT_ACCESS = ("read", "push")
TLS_MODES = ("intercept", "passthrough")
CAPTURE_MODES = ("proxy", "transparent")
# Transparent capture opens one proxy listener per captured port.
MAX_CAPTURED_PORTS = 64
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MIN_PLACEHOLDER_LENGTH = 16
DEFAULT_MAX_LABEL_ENTROPY = 3.5

# Patterns (full-match; the manifest schema and the policy parser both use these).
HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_PATTERN = rf"(?:\*\.)?{HOST_LABEL}(?:\.{HOST_LABEL})*"
PATH_PATTERN = r"/[^\s?#]*"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
HEADER_NAME_PATTERN = r"[A-Za-z0-9-]{1,64}"
USERNAME_PATTERN = r"[^:\s]{1,128}"
BRANCH_GLOB_PATTERN = r"[^\s\0~^:?\[\\]+"
REPO_PATH_PATTERN = r"[a-z0-9_.-]+(?:/[a-z0-9_.-]+)+"
GRAPHQL_NAME_PATTERN = r"[_A-Za-z][_0-9A-Za-z]*"
# Header names a credential route may never set: they frame or route the request.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})


class PolicyError(ValueError):
    """The policy file is not a valid policy of this version."""


# -- matchers ------------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_authority(authority: str) -> str:
    """The normalized host part of `host[:port]` or `[v6][:port]`."""
    authority = authority.strip()
    if authority.startswith("["):
        return normalize_host(authority[: authority.find("]") + 1] if "]" in authority else authority)
    if authority.count(":") == 1:
        authority = authority.rsplit(":", 1)[0]
    return normalize_host(authority)


def host_matches(pattern: str, host: str) -> bool:
    """Exact match, or `*.suffix`: any depth of subdomain of suffix, never the apex."""
    host = normalize_host(host)
    pattern = normalize_host(pattern)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


_INET_ATON_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


def is_ip_literal(host: str) -> bool:
    """An IPv4/IPv6 address in any form a resolver accepts (`127.1` and `0x7f.1` included)."""
    host = normalize_host(host).split("%", 1)[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        return bool(host) and len(labels) <= 4 and all(_INET_ATON_LABEL.fullmatch(label) for label in labels)
    return True


def clean_path(path: str) -> str | None:
    """The path a server acts on: no query or fragment, percent-decoded, empty segments
    collapsed. None when it has dot segments or backslashes (they could escape a prefix)."""
    raw = unquote(path.split("?", 1)[0].split("#", 1)[0])
    segments = raw.split("/")
    if any(s in (".", "..") for s in segments) or "\\" in raw:
        return None
    clean = "/" + "/".join(s for s in segments if s)
    return clean + "/" if raw.endswith("/") and clean != "/" else clean


def path_matches(prefixes: tuple[str, ...] | None, path: str) -> bool:
    """None matches every path; else the cleaned path must start with one of the prefixes."""
    if prefixes is None:
        return True
    clean = clean_path(path)
    return clean is not None and any(clean.startswith(p) for p in prefixes)


def method_matches(methods: tuple[str, ...] | None, method: str) -> bool:
    return methods is None or method.upper() in methods


# -- the contract's types ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AllowRule:
    """One allowed destination (`egress.allow[i]`): exact host or `*.suffix` (any depth)."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    ports: tuple[int, ...]
    private_upstream: bool
    scan_body: bool
    max_label_entropy: float = DEFAULT_MAX_LABEL_ENTROPY  # `*.` rules: labels above it look like data
    # passthrough: TLS to this host is not decrypted (pinned or mutual-TLS clients); only
    # the CONNECT target, the TLS SNI and the port are checked, nothing is scanned.
    tls: str = "intercept"


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where the proxy injects the real credential named by `token_ref` (`egress.routes[i]`)."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    scheme: str
    header: str | None
    username: str | None
    token_ref: str

    @property
    def header_name(self) -> str:
        """The header that carries the credential on this route."""
        return self.header if self.scheme == "header" and self.header else "authorization"


@dataclass(frozen=True, kw_only=True)
class GitRepository:
    """A repository the agent may use over smart HTTP (`git.repositories[i]`)."""

    id: str
    host: str
    path: str  # owner/repo, lower case, without .git
    access: str  # read | push


@dataclass(frozen=True, kw_only=True)
class GitPolicy:
    """Git smart-HTTP policy (`git`); always enforced, even in discover mode."""

    repositories: tuple[GitRepository, ...]
    protected_branches: tuple[str, ...]
    push_branches: tuple[str, ...] | None
    allow_force_push: bool
    allow_branch_deletion: bool


@dataclass(frozen=True, kw_only=True)
class GithubDeny:
    """A refused GitHub API operation: REST (method + path glob) or a GraphQL mutation field."""

    id: str
    method: str | None
    path: str | None
    graphql: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class Dns:
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class CapturedPort:
    """A TCP port the agent connects to, and the proxy's transparent listener the capture
    redirects those connections to."""

    port: int
    listen: int


@dataclass(frozen=True, kw_only=True)
class Transparent:
    """Transparent capture (`egress.capture: transparent`, docs/prds/0009-transparent-capture.md):
    the rules in the agent's network namespace send its TCP connections to `ports` to the
    proxy's listeners, and the proxy's DNS answers each name the policy allows with
    `dns_address` (the same address for every name: where a connection goes is the name in
    its TLS SNI or Host header, never the address the agent dialled)."""

    ports: tuple[CapturedPort, ...]
    dns_address: str

    def original_port(self, listen: int) -> int | None:
        """The port the agent connected to, by the listener that accepted the connection."""
        return next((p.port for p in self.ports if p.listen == listen), None)


@dataclass(frozen=True, kw_only=True)
class ScannerConfig:
    """How the proxy reaches pipelock's scan API."""

    url: str
    token: str
    mode: str
    timeout_seconds: float
    max_body_bytes: int
    responses: str = "warn"  # prompt-injection scan of text answers: off | warn | block


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Everything one proxy enforces. `placeholders` maps each token_ref to the value the
    agent holds instead of the real credential."""

    bottle: str
    mode: str
    listen: Listen
    clients: tuple[str, ...]
    allow: tuple[AllowRule, ...]
    routes: tuple[Route, ...]
    placeholders: Mapping[str, str]
    scanner: ScannerConfig
    upstream_ca: str | None
    dns: Dns | None
    git: GitPolicy | None = None
    github_deny: tuple[GithubDeny, ...] = ()
    transparent: Transparent | None = None  # None: the agent reaches the proxy only as a proxy

    def __repr__(self) -> str:  # placeholders and the scanner token stay out of tracebacks
        return f"Policy(bottle={self.bottle!r}, mode={self.mode!r}, allow={len(self.allow)}, routes={len(self.routes)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POLICY_VERSION,
            "bottle": self.bottle,
            "mode": self.mode,
            "listen": to_document(self.listen),
            "clients": list(self.clients),
            "allow": to_document(self.allow),
            "routes": to_document(self.routes),
            "placeholders": dict(self.placeholders),
            "scanner": to_document(self.scanner),
            "upstream_ca": self.upstream_ca,
            "dns": to_document(self.dns),
            "git": to_document(self.git),
            "github": {"deny": to_document(self.github_deny)} if self.github_deny else None,
            "transparent": to_document(self.transparent),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def to_document(value: Any) -> Any:
    """Contract types as plain JSON data (tuples become lists); the policy file and the
    dry-run both show them this way."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_document(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_document(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_document(v) for k, v in value.items()}
    return value


# -- the reader ---------------------------------------------------------------------------


def parse_policy(text: str) -> Policy:
    """Parse and strictly validate policy JSON; raise PolicyError naming the bad key."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise PolicyError(f"policy is not valid JSON: {e}") from None
    obj = _Obj(data, "policy")
    version = obj.take("version", int)
    if version != POLICY_VERSION:
        raise PolicyError(f"version: unsupported policy version {version!r} (expected {POLICY_VERSION})")
    bottle = _nonempty(obj.take("bottle", str), "bottle")
    mode = obj.take_choice("mode", MODES)
    listen = Listen(**_parse_endpoint(obj.take("listen", dict), "listen"))
    clients = tuple(_parse_ip(c, f"clients[{i}]") for i, c in enumerate(obj.take("clients", list)))
    allow = tuple(_parse_allow(r, f"allow[{i}]") for i, r in enumerate(obj.take("allow", list)))
    routes = tuple(_parse_route(r, f"routes[{i}]") for i, r in enumerate(obj.take("routes", list)))
    placeholders = _parse_placeholders(obj.take("placeholders", dict), routes)
    scanner = _parse_scanner(obj.take("scanner", dict), "scanner")
    upstream_ca = obj.take("upstream_ca", str, optional=True)
    dns_raw = obj.take("dns", dict, optional=True)
    dns = None if dns_raw is None else Dns(**_parse_endpoint(dns_raw, "dns"))
    git_raw = obj.take("git", dict, optional=True)
    git = None if git_raw is None else _parse_git(git_raw, "git")
    github_raw = obj.take("github", dict, optional=True)
    github_deny = () if github_raw is None else _parse_github(github_raw, "github")
    transparent_raw = obj.take("transparent", dict, optional=True)
    transparent = None if transparent_raw is None else _parse_transparent(
        transparent_raw, "transparent", {listen.port, *((dns.port,) if dns else ())})
    obj.finish()
    _check_unique([r.id for r in allow] + [r.id for r in routes], "allow/routes id")
    return Policy(bottle=bottle, mode=mode, listen=listen, clients=clients, allow=allow, routes=routes,
                  placeholders=placeholders, scanner=scanner, upstream_ca=upstream_ca, dns=dns, git=git,
                  github_deny=github_deny, transparent=transparent)


class _Obj:
    """Takes keys out of one JSON object; leftovers are unknown keys."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise PolicyError(f"{where}: must be an object")
        self.data = dict(data)
        self.where = where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where != "policy" else name

    def take(self, name: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
        if name not in self.data:
            if optional:
                return default
            raise PolicyError(f"{self.key(name)}: required key is missing")
        value = self.data.pop(name)
        if value is None and optional:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PolicyError(
                f"{self.key(name)}: expected {_KIND_NAMES.get(kind, kind.__name__)}, "
                f"got {type(value).__name__ if value is not None else 'null'}"
            )
        return value

    def take_choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.take(name, str)
        if value not in choices:
            raise PolicyError(f"{self.key(name)}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def take_strings(self, name: str, pattern: str, what: str) -> tuple[str, ...] | None:
        values = self.take(name, list, optional=True)
        if values is None:
            return None
        if not values:
            raise PolicyError(f"{self.key(name)}: must be null (any) or a non-empty list")
        for i, v in enumerate(values):
            if not isinstance(v, str) or not re.fullmatch(pattern, v):
                raise PolicyError(f"{self.key(name)}[{i}]: not a valid {what}: {v!r}")
        return tuple(values)

    def take_methods(self, name: str = "methods") -> tuple[str, ...] | None:
        return self.take_strings(name, "|".join(HTTP_METHODS), "HTTP method")

    def take_paths(self, name: str = "paths") -> tuple[str, ...] | None:
        return self.take_strings(name, PATH_PATTERN, "path prefix (must start with /)")

    def finish(self) -> None:
        if self.data:
            raise PolicyError(f"{self.where}: unknown key(s): {', '.join(sorted(self.data))}")


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}


def _parse_endpoint(data: dict, where: str) -> dict[str, Any]:
    obj = _Obj(data, where)
    host = _parse_ip(obj.take("host", str), obj.key("host"))
    port = _port(obj.take("port", int), obj.key("port"))
    obj.finish()
    return {"host": host, "port": port}


def _parse_allow(data: Any, where: str) -> AllowRule:
    obj = _Obj(data, where)
    rule_id = _nonempty(obj.take("id", str), obj.key("id"))
    host = _parse_host(obj.take("host", str), obj.key("host"))
    methods = obj.take_methods()
    paths = obj.take_paths()
    ports_raw = obj.take("ports", list)
    if not ports_raw:
        raise PolicyError(f"{obj.key('ports')}: must be a non-empty list")
    for i, p in enumerate(ports_raw):
        if not isinstance(p, int) or isinstance(p, bool):
            raise PolicyError(f"{obj.key('ports')}[{i}]: expected an integer, got {p!r}")
        _port(p, f"{obj.key('ports')}[{i}]")
    private_upstream = obj.take("private_upstream", bool)
    scan_body = obj.take("scan_body", bool)
    max_label_entropy = obj.take("max_label_entropy", float)
    if not 0 < max_label_entropy <= 8:
        raise PolicyError(f"{obj.key('max_label_entropy')}: must be between 0 and 8")
    tls = obj.take_choice("tls", TLS_MODES)
    obj.finish()
    if tls == "passthrough" and (methods is not None or paths is not None):
        raise PolicyError(f"{where}: a tls passthrough rule cannot name methods or paths (nothing is decrypted)")
    return AllowRule(id=rule_id, host=host, methods=methods, paths=paths, ports=tuple(ports_raw),
                     private_upstream=private_upstream, scan_body=scan_body, max_label_entropy=max_label_entropy,
                     tls=tls)


def _parse_route(data: Any, where: str) -> Route:
    obj = _Obj(data, where)
    route_id = _nonempty(obj.take("id", str), obj.key("id"))
    host = _parse_host(obj.take("host", str), obj.key("host"))
    methods = obj.take_methods()
    paths = obj.take_paths()
    scheme = obj.take_choice("scheme", SCHEMES)
    header = obj.take("header", str, optional=True)
    username = obj.take("username", str, optional=True)
    token_ref = obj.take("token_ref", str)
    if not re.fullmatch(ENV_NAME_PATTERN, token_ref):
        raise PolicyError(f"{obj.key('token_ref')}: not a valid environment variable name: {token_ref!r}")
    obj.finish()
    if scheme == "header":
        if not header or not re.fullmatch(HEADER_NAME_PATTERN, header) or header.lower() in RESERVED_HEADERS:
            raise PolicyError(f"{obj.key('header')}: scheme header needs a valid header name")
        header = header.lower()
    elif header is not None:
        raise PolicyError(f"{obj.key('header')}: only allowed with scheme header")
    if username is not None and (scheme != "basic" or not re.fullmatch(USERNAME_PATTERN, username)):
        raise PolicyError(f"{obj.key('username')}: only allowed with scheme basic, without ':' or spaces")
    return Route(id=route_id, host=host, methods=methods, paths=paths, scheme=scheme, header=header,
                 username=username, token_ref=token_ref)


def _parse_placeholders(data: dict, routes: tuple[Route, ...]) -> dict[str, str]:
    refs = {r.token_ref for r in routes}
    for ref, value in data.items():
        if ref not in refs:
            raise PolicyError(f"placeholders.{ref}: no route uses this token_ref")
        if not isinstance(value, str) or len(value) < MIN_PLACEHOLDER_LENGTH or any(c.isspace() for c in value):
            raise PolicyError(f"placeholders.{ref}: must be at least {MIN_PLACEHOLDER_LENGTH} characters "
                              "without spaces")
    for ref in sorted(refs - set(data)):
        raise PolicyError(f"placeholders.{ref}: required key is missing")
    _check_unique(list(data.values()), "placeholders")
    values = list(data.values())
    for value in values:
        if any(value != other and value in other for other in values):
            raise PolicyError("placeholders: one placeholder must not contain another")
    return dict(data)


def _parse_git(data: dict, where: str) -> GitPolicy:
    obj = _Obj(data, where)
    repos = []
    for i, raw in enumerate(obj.take("repositories", list)):
        r = _Obj(raw, f"{where}.repositories[{i}]")
        repo_id = _nonempty(r.take("id", str), r.key("id"))
        host = _parse_host(r.take("host", str), r.key("host"))
        if host.startswith("*."):
            raise PolicyError(f"{r.key('host')}: a git repository host must be exact: {host!r}")
        path = r.take("path", str)
        if (not re.fullmatch(REPO_PATH_PATTERN, path) or path.endswith(".git")
                or any(s in (".", "..") for s in path.split("/"))):
            raise PolicyError(f"{r.key('path')}: not a lower-case owner/repo path: {path!r}")
        access = r.take_choice("access", GIT_ACCESS)
        r.finish()
        repos.append(GitRepository(id=repo_id, host=host, path=path, access=access))
    protected = obj.take_strings("protected_branches", BRANCH_GLOB_PATTERN, "branch glob") or ()
    push = obj.take_strings("push_branches", BRANCH_GLOB_PATTERN, "branch glob")
    force = obj.take("allow_force_push", bool)
    deletion = obj.take("allow_branch_deletion", bool)
    obj.finish()
    _check_unique([r.id for r in repos], "git.repositories id")
    return GitPolicy(repositories=tuple(repos), protected_branches=protected, push_branches=push,
                     allow_force_push=force, allow_branch_deletion=deletion)


def _parse_github(data: dict, where: str) -> tuple[GithubDeny, ...]:
    obj = _Obj(data, where)
    out = []
    for i, raw in enumerate(obj.take("deny", list)):
        d = _Obj(raw, f"{where}.deny[{i}]")
        deny_id = _nonempty(d.take("id", str), d.key("id"))
        method = d.take("method", str, optional=True)
        path = d.take("path", str, optional=True)
        graphql = d.take("graphql", str, optional=True)
        reason = _nonempty(d.take("reason", str), d.key("reason"))
        d.finish()
        if (graphql is None) == (path is None):
            raise PolicyError(f"{d.where}: needs either path (REST) or graphql")
        if method is not None and (path is None or method not in HTTP_METHODS):
            raise PolicyError(f"{d.key('method')}: an HTTP method, only with path: {method!r}")
        if path is not None and not re.fullmatch(PATH_PATTERN, path):
            raise PolicyError(f"{d.key('path')}: not a path pattern: {path!r}")
        if graphql is not None and not re.fullmatch(GRAPHQL_NAME_PATTERN, graphql):
            raise PolicyError(f"{d.key('graphql')}: not a GraphQL field name: {graphql!r}")
        out.append(GithubDeny(id=deny_id, method=method, path=path, graphql=graphql, reason=reason))
    obj.finish()
    _check_unique([d.id for d in out], "github.deny id")
    return tuple(out)


def _parse_transparent(data: dict, where: str, own_ports: set[int]) -> Transparent:
    obj = _Obj(data, where)
    raw_ports = obj.take("ports", list)
    address = _parse_ip(obj.take("dns_address", str), obj.key("dns_address"))
    obj.finish()
    if not 0 < len(raw_ports) <= MAX_CAPTURED_PORTS:
        raise PolicyError(f"{obj.key('ports')}: must list 1 to {MAX_CAPTURED_PORTS} ports")
    ports = []
    for i, raw in enumerate(raw_ports):
        p = _Obj(raw, f"{obj.key('ports')}[{i}]")
        port = _port(p.take("port", int), p.key("port"))
        listener = _port(p.take("listen", int), p.key("listen"))
        p.finish()
        if listener in own_ports:
            raise PolicyError(f"{p.key('listen')}: {listener} is a port the proxy already serves")
        ports.append(CapturedPort(port=port, listen=listener))
    _check_unique([str(p.port) for p in ports], f"{obj.key('ports')} port")
    _check_unique([str(p.listen) for p in ports], f"{obj.key('ports')} listen")
    if ipaddress.ip_address(address).version != 4:
        raise PolicyError(f"{obj.key('dns_address')}: must be an IPv4 address (the agent has no IPv6)")
    return Transparent(ports=tuple(ports), dns_address=address)


def _parse_scanner(data: dict, where: str) -> ScannerConfig:
    obj = _Obj(data, where)
    url = obj.take("url", str)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.path.startswith("/"):
        raise PolicyError(f"{obj.key('url')}: must be an http:// URL with a host and path, got {url!r}")
    token = _nonempty(obj.take("token", str), obj.key("token"))
    mode = obj.take_choice("mode", SCANNER_MODES)
    timeout = obj.take("timeout_seconds", float)
    if not 0 < timeout <= 300:
        raise PolicyError(f"{obj.key('timeout_seconds')}: must be between 0 and 300")
    max_body = obj.take("max_body_bytes", int)
    if max_body <= 0:
        raise PolicyError(f"{obj.key('max_body_bytes')}: must be positive")
    responses = obj.take_choice("responses", RESPONSE_SCAN_MODES)
    obj.finish()
    return ScannerConfig(url=url, token=token, mode=mode, timeout_seconds=timeout, max_body_bytes=max_body,
                         responses=responses)


def _parse_host(value: str, where: str) -> str:
    host = normalize_host(value)
    if not re.fullmatch(HOST_PATTERN, host):
        raise PolicyError(f"{where}: not a host name or *.suffix pattern: {value!r}")
    if is_ip_literal(host.removeprefix("*.")):
        raise PolicyError(f"{where}: IP literals are not allowed, name the host: {value!r}")
    return host


def _parse_ip(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise PolicyError(f"{where}: not an IP address: {value!r}") from None


def _port(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise PolicyError(f"{where}: port out of range: {value}")
    return value


def _nonempty(value: str, where: str) -> str:
    if not value:
        raise PolicyError(f"{where}: must not be empty")
    return value


def _check_unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise PolicyError(f"{what}: duplicate value {v!r}")
        seen.add(v)
