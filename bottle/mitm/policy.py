"""The proxy policy file (version 1): the host renders it, the proxy reads it.

Stdlib only: this module runs on the host and inside the proxy image.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

MODES = ("enforce", "discover")
SCANNER_MODES = ("block", "audit")
SCHEMES = ("bearer", "token", "basic", "header")

_HOST_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_RE = re.compile(rf"^(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*$")
_METHOD_RE = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class PolicyError(ValueError):
    """The policy file is not a valid version 1 policy."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class Rule:
    """Allows requests to `host` (exact, or `*.suffix` for any subdomain depth)."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    ports: tuple[int, ...]
    private_upstream: bool
    scan_body: bool


@dataclass(frozen=True)
class Route:
    """Injects the credential in env var `token_ref` on matching requests."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    scheme: str
    header: str | None
    username: str | None
    token_ref: str
    placeholder: str


@dataclass(frozen=True)
class Scanner:
    url: str
    token: str
    mode: str
    timeout_seconds: float
    max_body_bytes: int


@dataclass(frozen=True)
class Dns:
    host: str
    port: int


@dataclass(frozen=True)
class GitRepository:
    """One repository the agent may use over smart HTTP (`git.repositories[i]`)."""

    id: str
    host: str
    path: str  # owner/repo, lower case, without .git
    access: str  # read | push


@dataclass(frozen=True)
class GitPolicy:
    repositories: tuple[GitRepository, ...]
    protected_branches: tuple[str, ...]
    push_branches: tuple[str, ...] | None
    allow_force_push: bool
    allow_branch_deletion: bool


@dataclass(frozen=True)
class GithubDeny:
    """A refused GitHub API operation: REST (method + path glob) or a GraphQL mutation field."""

    id: str
    method: str | None
    path: str | None
    graphql: str | None
    reason: str


@dataclass(frozen=True)
class Policy:
    version: int
    bottle: str
    mode: str
    listen: Listen
    clients: tuple[str, ...]
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    scanner: Scanner
    upstream_ca: str | None
    dns: Dns | None
    git: GitPolicy | None = None
    github_deny: tuple[GithubDeny, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(asdict(self))
        deny = data.pop("github_deny")
        data["github"] = {"deny": deny} if deny else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def parse_policy(text: str) -> Policy:
    """Parse and strictly validate policy JSON; raise PolicyError naming the bad key."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise PolicyError(f"policy is not valid JSON: {e}") from None
    obj = _Obj(data, "policy")
    version = obj.take("version", int)
    if version != 1:
        raise PolicyError(f"version: unsupported policy version {version!r} (expected 1)")
    bottle = obj.take("bottle", str)
    if not bottle:
        raise PolicyError("bottle: must not be empty")
    mode = obj.take_choice("mode", MODES)
    listen = _parse_listen(obj.take("listen", dict), "listen")
    clients = tuple(_parse_ip(c, f"clients[{i}]") for i, c in enumerate(obj.take("clients", list)))
    rules = tuple(_parse_rule(r, f"rules[{i}]") for i, r in enumerate(obj.take("rules", list)))
    routes = tuple(_parse_route(r, f"routes[{i}]") for i, r in enumerate(obj.take("routes", list)))
    scanner = _parse_scanner(obj.take("scanner", dict), "scanner")
    upstream_ca = obj.take("upstream_ca", str, optional=True)
    dns_raw = obj.take("dns", dict, optional=True)
    dns = None if dns_raw is None else _parse_dns(dns_raw, "dns")
    git_raw = obj.take("git", dict, optional=True)
    git = None if git_raw is None else _parse_git(git_raw, "git")
    github_raw = obj.take("github", dict, optional=True)
    github_deny = () if github_raw is None else _parse_github(github_raw, "github")
    obj.finish()
    _check_unique([r.id for r in rules] + [r.id for r in routes], "rules/routes id")
    _check_unique([r.placeholder for r in routes], "routes placeholder")
    return Policy(1, bottle, mode, listen, clients, rules, routes, scanner, upstream_ca, dns, git, github_deny)


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

    def take_strings(self, name: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...] | None:
        values = self.take(name, list, optional=True)
        if values is None:
            return None
        if not values:
            raise PolicyError(f"{self.key(name)}: must be null (any) or a non-empty list")
        for i, v in enumerate(values):
            if not isinstance(v, str) or not pattern.match(v):
                raise PolicyError(f"{self.key(name)}[{i}]: not a valid {what}: {v!r}")
        return tuple(values)

    def finish(self) -> None:
        if self.data:
            names = ", ".join(sorted(self.data))
            where = "policy" if self.where == "policy" else self.where
            raise PolicyError(f"{where}: unknown key(s): {names}")


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}
_PATH_RE = re.compile(r"^/[^\s?#]*$")


def _parse_listen(data: dict, where: str) -> Listen:
    obj = _Obj(data, where)
    host = obj.take("host", str)
    _parse_ip(host, obj.key("host"))
    port = _port(obj.take("port", int), obj.key("port"))
    obj.finish()
    return Listen(host, port)


def _parse_dns(data: dict, where: str) -> Dns:
    obj = _Obj(data, where)
    host = _parse_ip(obj.take("host", str), obj.key("host"))
    port = _port(obj.take("port", int), obj.key("port"))
    obj.finish()
    return Dns(host, port)


def _parse_rule(data: Any, where: str) -> Rule:
    obj = _Obj(data, where)
    rule_id = _nonempty(obj.take("id", str), obj.key("id"))
    host = _parse_host(obj.take("host", str), obj.key("host"))
    methods = obj.take_strings("methods", _METHOD_RE, "HTTP method")
    paths = obj.take_strings("paths", _PATH_RE, "path prefix (must start with /)")
    ports_raw = obj.take("ports", list, optional=True, default=[443])
    if not ports_raw:
        raise PolicyError(f"{obj.key('ports')}: must be a non-empty list")
    ports = tuple(
        _port(p, f"{obj.key('ports')}[{i}]") if isinstance(p, int) and not isinstance(p, bool)
        else _bad(f"{obj.key('ports')}[{i}]: expected an integer, got {p!r}")
        for i, p in enumerate(ports_raw)
    )
    private_upstream = obj.take("private_upstream", bool, optional=True, default=False)
    scan_body = obj.take("scan_body", bool, optional=True, default=True)
    obj.finish()
    return Rule(rule_id, host, methods, paths, ports, private_upstream, scan_body)


def _parse_route(data: Any, where: str) -> Route:
    obj = _Obj(data, where)
    route_id = _nonempty(obj.take("id", str), obj.key("id"))
    host = _parse_host(obj.take("host", str), obj.key("host"))
    methods = obj.take_strings("methods", _METHOD_RE, "HTTP method")
    paths = obj.take_strings("paths", _PATH_RE, "path prefix (must start with /)")
    scheme = obj.take_choice("scheme", SCHEMES)
    header = obj.take("header", str, optional=True)
    username = obj.take("username", str, optional=True)
    token_ref = obj.take("token_ref", str)
    if not _ENV_RE.match(token_ref):
        raise PolicyError(f"{obj.key('token_ref')}: not a valid environment variable name: {token_ref!r}")
    placeholder = obj.take("placeholder", str)
    if len(placeholder) < 16 or any(c.isspace() for c in placeholder):
        raise PolicyError(f"{obj.key('placeholder')}: must be at least 16 characters without spaces")
    obj.finish()
    if scheme == "header":
        if not header or not _HEADER_RE.match(header):
            raise PolicyError(f"{obj.key('header')}: scheme header needs a valid header name")
        header = header.lower()
    elif header is not None:
        raise PolicyError(f"{obj.key('header')}: only allowed with scheme header")
    if username is not None and scheme != "basic":
        raise PolicyError(f"{obj.key('username')}: only allowed with scheme basic")
    return Route(route_id, host, methods, paths, scheme, header, username, token_ref, placeholder)


_REPO_PATH_RE = re.compile(r"^[a-z0-9_.-]+(/[a-z0-9_.-]+)+$")
_REF_GLOB_RE = re.compile(r"^[^\s\0~^:?\[\\]+$")
_GRAPHQL_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


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
        if not _REPO_PATH_RE.match(path) or path.endswith(".git") or any(s in (".", "..") for s in path.split("/")):
            raise PolicyError(f"{r.key('path')}: not a lower-case owner/repo path: {path!r}")
        access = r.take_choice("access", ("read", "push"))
        r.finish()
        repos.append(GitRepository(repo_id, host, path, access))
    protected = obj.take_strings("protected_branches", _REF_GLOB_RE, "branch glob") or ()
    push = obj.take_strings("push_branches", _REF_GLOB_RE, "branch glob")
    force = obj.take("allow_force_push", bool)
    deletion = obj.take("allow_branch_deletion", bool)
    obj.finish()
    _check_unique([r.id for r in repos], "git.repositories id")
    return GitPolicy(tuple(repos), protected, push, force, deletion)


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
        if method is not None and (path is None or not _METHOD_RE.match(method)):
            raise PolicyError(f"{d.key('method')}: an HTTP method, only with path: {method!r}")
        if path is not None and not _PATH_RE.match(path):
            raise PolicyError(f"{d.key('path')}: not a path pattern: {path!r}")
        if graphql is not None and not _GRAPHQL_NAME_RE.match(graphql):
            raise PolicyError(f"{d.key('graphql')}: not a GraphQL field name: {graphql!r}")
        out.append(GithubDeny(deny_id, method, path, graphql, reason))
    obj.finish()
    _check_unique([d.id for d in out], "github.deny id")
    return tuple(out)


def _parse_scanner(data: dict, where: str) -> Scanner:
    obj = _Obj(data, where)
    url = obj.take("url", str)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.path.startswith("/"):
        raise PolicyError(f"{obj.key('url')}: must be an http:// URL with a host and path, got {url!r}")
    token = _nonempty(obj.take("token", str), obj.key("token"))
    mode = obj.take_choice("mode", SCANNER_MODES)
    timeout = obj.take("timeout_seconds", float, optional=True, default=10.0)
    if not 0 < timeout <= 300:
        raise PolicyError(f"{obj.key('timeout_seconds')}: must be between 0 and 300")
    max_body = obj.take("max_body_bytes", int, optional=True, default=8 * 1024 * 1024)
    if max_body <= 0:
        raise PolicyError(f"{obj.key('max_body_bytes')}: must be positive")
    obj.finish()
    return Scanner(url, token, mode, timeout, max_body)


def _parse_host(value: str, where: str) -> str:
    host = value.lower().rstrip(".")
    if not _HOST_RE.match(host):
        raise PolicyError(f"{where}: not a host name or *.suffix pattern: {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    raise PolicyError(f"{where}: IP literals are not allowed, name the host: {value!r}")


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


def _bad(message: str) -> Any:
    raise PolicyError(message)


def _check_unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise PolicyError(f"{what}: duplicate value {v!r}")
        seen.add(v)
