"""The manifest: the only module that knows YAML.

`load_manifest(path)` reads a manifest with PyYAML's safe loader, checks it against
`MANIFEST_SCHEMA` and the rules no schema can express, and returns a validated dict
with every default filled in. Every problem is reported at once, each with the file,
the line, the key path (`egress.routes[1].auth.scheme`), what was expected and what
was found. Unknown keys are errors: a misspelt security setting must never be
silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bottle import schema
from bottle.backend import BACKENDS
from bottle.errors import ManifestError
from bottle.mitm import policy as contract
from bottle.mitm.policy import ENV_NAME_PATTERN, HTTP_METHODS, host_matches, is_ip_literal
from bottle.schema import Bool, Field, Int, ListOf, MapOf, Num, Obj, OneOf, Problem, Str

MANIFEST_VERSION = 1
DEFAULT_AGENT_IMAGE = "bottle/agent:0.1.0"
DEFAULT_PIPELOCK_IMAGE = "ghcr.io/luckypipewrench/pipelock:2.3.0"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_NODES = 20_000
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")

HOST_PATTERN = rf"{contract.HOST_PATTERN}\.?"  # a trailing dot is normalized away
# Names bottle sets in the agent itself; a manifest may not override them.
RESERVED_AGENT_ENV = frozenset(
    {
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
        "ALL_PROXY", "all_proxy", "NODE_USE_ENV_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
        "NODE_EXTRA_CA_CERTS", "GIT_SSL_NO_VERIFY", "NODE_TLS_REJECT_UNAUTHORIZED",
        "PYTHONHTTPSVERIFY",
    }
)


def _lower(value: str) -> str:
    return value.lower().rstrip(".")


def _methods() -> ListOf:
    return ListOf(
        Str(choices=HTTP_METHODS),
        min_items=1,
        unique=True,
        description="HTTP methods this applies to; omit for every method.",
    )


def _paths() -> ListOf:
    return ListOf(
        Str(pattern=contract.PATH_PATTERN, expected="a path prefix starting with /", max_length=1024),
        min_items=1,
        unique=True,
        description="URL path prefixes this applies to (`/v1/` matches `/v1/messages`); omit for every path.",
    )


def _host(what: str) -> Str:
    return Str(
        pattern=HOST_PATTERN,
        expected="a lower-case DNS name such as api.example.com or a *. wildcard such as *.example.com",
        max_length=253,
        normalize=_lower,
        description=f"{what}: an exact DNS name, or `*.example.com` for any subdomain (not the apex). Case-insensitive.",
    )


ALLOW_RULE = Obj(
    description="One host the agent may reach, optionally narrowed to methods, paths and ports.",
    fields={
        "host": Field(_host("Destination host"), required=True),
        "methods": Field(_methods()),
        "paths": Field(_paths()),
        "ports": Field(
            ListOf(Int(minimum=1, maximum=65535), min_items=1, unique=True,
                   description="Destination ports (default 443 and 80)."),
            default=lambda: [443, 80],
        ),
        "private_upstream": Field(
            Bool(description="Allow this host to resolve to a private, loopback or link-local "
                 "address (for a corporate server or a test upstream). Off by default: "
                 "non-global addresses are refused."),
            default=False,
        ),
        "scan_body": Field(
            Bool(description="Scan request bodies for secrets (default true). Set false only "
                 "for hosts that receive binary bodies that cannot be scanned, such as git "
                 "packfiles; the URL and headers are still scanned and the body is streamed."),
            default=True,
        ),
        "max_label_entropy": Field(
            Num(exclusive_minimum=0, maximum=8,
                description="For `*.` rules only: a host name whose labels under the wildcard look "
                "like encoded data is refused (a run of 16+ characters that is all hex digits or has "
                "more entropy per character than this, or more than 4 labels), so data cannot leave "
                "in host names. Bits per character; default 3.5; 6 or more turns the check off."),
            default=contract.DEFAULT_MAX_LABEL_ENTROPY,
        ),
        "tls": Field(
            Str(choices=contract.TLS_MODES,
                description="intercept (default): TLS is decrypted and every request checked and scanned. "
                "passthrough: for pinned or mutual-TLS clients; the tunnel is not decrypted, only host (CONNECT "
                "target and TLS SNI) and port are checked, nothing is scanned. Allows no methods, paths, "
                "scan_body, credential routes or git repositories."),
            default="intercept",
        ),
    },
)

AUTH = Obj(
    description="How the proxy injects the real credential. The value is read from the host "
    "environment variable named by token_ref when the bottle starts; it never appears in "
    "the manifest, the plan, the agent or a log.",
    fields={
        "scheme": Field(
            Str(choices=contract.SCHEMES,
                description="bearer: `Authorization: Bearer <v>`; token: `Authorization: token <v>`; "
                "basic: `Authorization: Basic base64(username:v)`; header: `<header>: <v>`."),
            required=True,
        ),
        "token_ref": Field(
            Str(pattern=ENV_NAME_PATTERN, expected="an environment variable name such as ANTHROPIC_API_KEY",
                description="Name of the host environment variable holding the real credential."),
            required=True,
        ),
        "header": Field(
            Str(pattern=contract.HEADER_NAME_PATTERN, expected="an HTTP header name such as x-api-key",
                normalize=str.lower, description="Header name, for scheme `header` only."),
        ),
        "username": Field(
            Str(pattern=contract.USERNAME_PATTERN, expected="a user name without ':' or spaces",
                description="User name for scheme `basic` (e.g. x-access-token for GitHub)."),
        ),
    },
)

ROUTE = Obj(
    description="A credential route: requests matching it get the real credential injected.",
    fields={
        "host": Field(_host("Host the credential is sent to"), required=True),
        "methods": Field(_methods()),
        "paths": Field(_paths()),
        "auth": Field(AUTH, required=True),
    },
)

_ANY_CASE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
REPO_PATTERN = rf"{_ANY_CASE_LABEL}(?:\.{_ANY_CASE_LABEL})+(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+){{2,}}"
BRANCH_GLOB = Str(
    pattern=contract.BRANCH_GLOB_PATTERN, expected="a branch name or glob such as main or sandbox/*", max_length=255,
    description="A branch name (`main`) or glob (`sandbox/*`, `*` also crosses `/`); names starting "
    "with refs/ match full ref names (`refs/tags/*`).",
)


def _repo(value: str) -> str:
    value = value.lower()
    return value[:-4] if value.endswith(".git") else value


GIT = Obj(
    description="Git over smart HTTP, enforced by the proxy even in discover mode. Once this section "
    "exists, the hosts of its repositories serve only the listed repositories (clone, fetch and push). "
    "Git over SSH is always closed.",
    fields={
        "repositories": Field(
            ListOf(
                Obj(description="A repository the agent may use.", fields={
                    "repo": Field(
                        Str(pattern=REPO_PATTERN, expected="host/owner/repo such as github.com/acme/widgets",
                            max_length=512, normalize=_repo,
                            description="host/owner/repo (GitLab subgroups allowed); case-insensitive, "
                            "optional .git."),
                        required=True,
                    ),
                    "access": Field(
                        Str(choices=contract.GIT_ACCESS,
                            description="read: clone and fetch. push: also push (subject to the branch rules)."),
                        required=True,
                    ),
                }),
                min_items=1,
                description="Repositories the agent may clone, fetch or push.",
            ),
            required=True,
        ),
        "protected_branches": Field(
            ListOf(BRANCH_GLOB, unique=True, description="Branches never pushed to, created or deleted."),
            default=lambda: ["main", "master"],
        ),
        "push_branches": Field(
            ListOf(BRANCH_GLOB, min_items=1, unique=True,
                   description="Bot mode: when set, only refs matching these globs may be pushed."),
        ),
        "allow_force_push": Field(
            Bool(description="Allow updates the proxy cannot prove to be fast-forwards (default false)."),
            default=False,
        ),
        "allow_branch_deletion": Field(Bool(description="Allow deleting refs (default false)."), default=False),
    },
)

GITHUB_DENY = Obj(
    description="A GitHub API operation to refuse: REST `method` + `path`, or a GraphQL mutation field.",
    fields={
        "method": Field(Str(choices=HTTP_METHODS, description="HTTP method; omit for every method.")),
        "path": Field(Str(pattern=contract.PATH_PATTERN, expected="a path pattern starting with /", max_length=1024,
                          description="REST path; `*` is one segment, `**` one or more.")),
        "graphql": Field(Str(pattern=contract.GRAPHQL_NAME_PATTERN, expected="a GraphQL field name such as deleteIssue",
                             max_length=128, description="Top-level mutation field name.")),
        "reason": Field(Str(pattern=r"[^\n\0]+", expected="a one-line reason", max_length=200,
                            description="Shown to the agent when refused."), required=True),
    },
)

GITHUB = Obj(
    description="GitHub API refusals on api.github.com, enforced even in discover mode, added to the "
    "built-in ones (docs/manifest.md): merging, releases, moving refs, deleting repositories, and changing "
    "branch protection, rulesets, settings, visibility, keys, webhooks, collaborators, secrets, runners, "
    "environments, workflows or gists. With a git section, the API writes only its github.com repositories "
    "and its branch writes obey the git push rules.",
    fields={"deny": Field(ListOf(GITHUB_DENY, description="Refusals added to the defaults."), default=list)},
)

MEMORY = OneOf(
    alternatives=(
        Str(pattern=r"[1-9][0-9]*[kmgKMG]?", expected="a size"),
        Int(minimum=4 * 1024 * 1024),
    ),
    expected="a memory size such as 512m or 4g",
    description="Memory limit, e.g. 4g (swap is disabled).",
)

_WORKSPACE_PATH = Str(pattern=r"[^\0]+", expected="a host directory path",
                      description="Host directory, relative to the manifest file.")
WORKSPACE = OneOf(
    alternatives=(
        _WORKSPACE_PATH,
        Obj(description="The workspace with options.", fields={
            "path": Field(_WORKSPACE_PATH, required=True),
            "read_only": Field(Bool(description="Mount it read-only: the agent reads the code and writes "
                                    "nothing there (default false)."), default=False),
        }),
    ),
    expected="a host directory path, or a mapping with path and read_only",
    description="Host directory mounted at workdir (read-write unless read_only), relative to the "
    "manifest file: `workspace: ..` or `workspace: {path: .., read_only: true}`.",
)

DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = rf"{DNS_LABEL}(?:\.{DNS_LABEL})*"

KUBERNETES = Obj(
    description="Settings for the Kubernetes backend. Unset values follow the user's kubeconfig "
    "(its current context and that context's namespace).",
    fields={
        "namespace": Field(Str(pattern=DNS_LABEL, max_length=63, expected="a namespace name such as agents",
                               description="Namespace the bottle's objects are created in; "
                               "`bottle start --namespace` overrides it.")),
        "context": Field(Str(pattern=r"[^\s]+", max_length=253, expected="a kubeconfig context name",
                             description="kubeconfig context to use; `bottle start --context` overrides it.")),
        "credentials_secret": Field(
            Str(pattern=DNS_NAME, max_length=253, expected="a Secret name such as agent-credentials",
                description="An existing Secret in the namespace whose keys are the routes' token_ref "
                "names; the proxy reads the real credentials from it instead of from bottle's environment."),
        ),
        "proxy_host_aliases": Field(
            ListOf(
                Obj(description="Names the proxy resolves to a fixed address (its /etc/hosts).", fields={
                    "ip": Field(Str(pattern=r"[0-9A-Fa-f.:]{2,45}", expected="an IP address such as 10.0.0.7",
                                    description="The address."), required=True),
                    "hostnames": Field(ListOf(Str(pattern=DNS_NAME, max_length=253, normalize=_lower,
                                                  expected="a DNS name such as git.internal.example"),
                                              min_items=1, unique=True, description="Names for it."),
                                       required=True),
                }),
                description="Fixed name-to-address entries for the egress proxy, e.g. for a private "
                "server the cluster's DNS does not know (the proxy still applies every rule).",
            ),
        ),
    },
)

MANIFEST_SCHEMA = Obj(
    description="A bottle manifest (version 1).",
    fields={
        "version": Field(Int(minimum=1, maximum=1, description="Manifest format version."), required=True),
        "name": Field(
            Str(pattern=r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?",
                expected="a name of lower-case letters, digits and dashes (at most 32)",
                description="The bottle's name; containers and networks are named after it."),
            required=True,
        ),
        "agent": Field(
            Obj(
                description="The agent container.",
                fields={
                    "image": Field(Str(pattern=r"[^\s]+", expected="an image reference",
                                       description="Agent image."), default=DEFAULT_AGENT_IMAGE),
                    "command": Field(
                        ListOf(Str(max_length=65536), min_items=1,
                               description="Command to run (argv list). `bottle start M -- cmd...` overrides it."),
                        default=lambda: ["claude"],
                    ),
                    "workdir": Field(Str(pattern=r"/[^\0]*", expected="an absolute path",
                                         description="Working directory inside the agent."),
                                     default="/workspace"),
                    "workspace": Field(WORKSPACE),
                    "user": Field(
                        Str(pattern=r"[0-9]+:[0-9]+", expected="a numeric UID:GID such as 1000:1000",
                            description="Non-root user the agent runs as. Default: the owner of agent.workspace "
                            "(so what the agent writes there is the owner's), else 1000:1000 "
                            "(docs/prds/0014-workspace-owner-and-doctor.md)."),
                    ),
                    "env": Field(MapOf(key=Str(pattern=ENV_NAME_PATTERN, expected="an environment variable name"),
                                       value=Str(max_length=32768),
                                       description="Extra environment variables for the agent (never secrets)."),
                                 default=dict),
                    "resources": Field(
                        Obj(description="Resource limits.", fields={
                            "cpus": Field(Num(exclusive_minimum=0, maximum=256, description="CPU limit."), default=2),
                            "memory": Field(MEMORY, default="4g"),
                            "pids": Field(Int(minimum=16, maximum=1_000_000, description="Process limit."), default=1024),
                        }),
                        default=lambda: {"cpus": 2, "memory": "4g", "pids": 1024},
                    ),
                },
            ),
            default=dict,
        ),
        "egress": Field(
            Obj(
                description="What may leave the bottle.",
                fields={
                    "mode": Field(
                        Str(choices=contract.MODES,
                            description="enforce: block what the rules do not allow. discover: log what "
                            "would be blocked and let it through (secret scanning still blocks)."),
                        default="enforce",
                    ),
                    "capture": Field(
                        Str(choices=contract.CAPTURE_MODES,
                            description="proxy (default): the agent reaches the world only through the proxy "
                            "settings (HTTPS_PROXY); a program that ignores them cannot connect. transparent: "
                            "every TCP connection the agent opens to ports 80, 443 and the ports of the allow "
                            "rules goes through the proxy without any client setting (the host is the TLS SNI or "
                            "the Host header), DNS answers the names the rules allow, and every other packet is "
                            "rejected. Proxy settings keep working (docs/prds/0009-transparent-capture.md)."),
                        default="proxy",
                    ),
                    "allow": Field(ListOf(ALLOW_RULE, description="Allowed destinations."), default=list),
                    "routes": Field(ListOf(ROUTE, description="Credential routes."), default=list),
                    "upstream_ca": Field(Str(pattern=r"[^\0]+", expected="a path to a PEM file",
                                             description="Extra CA bundle (PEM) trusted for upstream hosts "
                                             "with private CAs, relative to the manifest file; public roots stay trusted.")),
                },
            ),
            default=dict,
        ),
        "scanner": Field(
            Obj(
                description="The pipelock DLP scanner.",
                fields={
                    "image": Field(Str(pattern=r"[^\s]+", expected="an image reference",
                                       description="pipelock image (pinned)."), default=DEFAULT_PIPELOCK_IMAGE),
                    "responses": Field(Str(choices=contract.RESPONSE_SCAN_MODES,
                                           description="Scan text answers (SSE events as they stream, JSON, "
                                           "HTML, …) for prompt injection aimed at the agent. warn (default): "
                                           "log the finding and pass the answer. block: cut the answer off "
                                           "(a buffered answer is replaced by a refusal). off: do not scan."),
                                       default="warn"),
                    "mode": Field(Str(choices=contract.SCANNER_MODES,
                                      description="block: a finding blocks the request. audit: findings are "
                                      "logged as would_block. An unreachable scanner blocks in both modes."),
                                  default="block"),
                },
            ),
            default=dict,
        ),
        "git": Field(GIT),
        "github": Field(GITHUB),
        "backend": Field(Str(choices=BACKENDS, description="Where the bottle runs (default docker); "
                             "`bottle start --backend` overrides it.")),
        "docker": Field(
            Obj(
                description="Settings for the Docker backend.",
                fields={
                    "egress_network": Field(
                        Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", expected="a Docker network name",
                            description="Attach the egress proxy to this existing network instead of a "
                            "fresh bridge (e.g. where a private git server runs)."),
                    ),
                },
            ),
            default=dict,
        ),
        "kubernetes": Field(KUBERNETES),
    },
)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest: `data` follows MANIFEST_SCHEMA with every default filled in."""

    path: Path
    data: Mapping[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path from the manifest, relative to the manifest's own directory."""
        return (self.directory / os.path.expanduser(relative)).resolve()


def json_schema() -> dict[str, Any]:
    document = MANIFEST_SCHEMA.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://bottle.dev/schema/manifest-v1.json",
        "title": "bottle manifest",
        **document,
    }


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory, expected a manifest file") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read: {e.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {len(raw)} bytes is too large for a manifest (limit {MAX_MANIFEST_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_manifest(text, path)


def parse_manifest(text: str, path: Path) -> Manifest:
    document, lines = _load_yaml(text, path)
    problems: list[Problem] = []
    data = MANIFEST_SCHEMA.check(document, (), problems)
    if not problems:
        problems.extend(_check_semantics(data, path))
        problems.extend(_check_passthrough(document, data))
    if problems:
        raise ManifestError(_format_problems(path, problems, lines))
    return Manifest(path=path, data=data)


# -- YAML with line numbers ------------------------------------------------------------


def _yaml_error(path: Path, e: yaml.YAMLError) -> ManifestError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        return ManifestError(f"{path}{where}: not valid YAML: {e.problem or e.context or 'invalid YAML'}")
    return ManifestError(f"{path}: not valid YAML: {e}")


def _load_yaml(text: str, path: Path) -> tuple[Any, dict[schema.Path, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise ManifestError(f"{path}: the file is empty; expected a manifest mapping (see `bottle schema`)")
        lines: dict[schema.Path, int] = {}
        value = _to_python(node, (), lines, yaml.SafeLoader(""), path, [MAX_NODES])
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    return value, lines


def _to_python(
    node: yaml.Node, at: schema.Path, lines: dict, constructor: yaml.SafeLoader, path: Path, budget: list[int]
) -> Any:
    # Aliases are shared nodes: expanding them can explode ("billion laughs"). A manifest
    # never needs more than a few thousand values, so stop long before that matters.
    budget[0] -= 1
    if budget[0] < 0 or len(at) > 64:
        raise ManifestError(f"{path}: too many nested or repeated values (YAML aliases?); a manifest is small")
    lines[at] = node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise ManifestError(
            f"{path}:{node.start_mark.line + 1}: not valid YAML: the tag {node.tag!r} is not allowed in a manifest"
        )
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ManifestError(
                    f"{path}:{key_node.start_mark.line + 1}: {schema.format_path(at)}: "
                    "expected a plain key; found a complex (mapping or list) key"
                )
            key = constructor.construct_object(key_node)
            key = key if isinstance(key, str) else str(key)
            if key in out:
                raise ManifestError(
                    f"{path}:{key_node.start_mark.line + 1}: {schema.format_path((*at, key))}: "
                    f"expected each key once; found {key!r} again (first on line {lines[(*at, key)]})"
                )
            lines[(*at, key)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, (*at, key), lines, constructor, path, budget)
            lines[(*at, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*at, i), lines, constructor, path, budget) for i, item in enumerate(node.value)]
    return constructor.construct_object(node)


def _line_for(path: schema.Path, lines: Mapping[schema.Path, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _format_problems(path: Path, problems: list[Problem], lines: Mapping[schema.Path, int]) -> str:
    rendered = []
    for problem in sorted(problems, key=lambda p: (_line_for(p.path, lines) or 0, schema.format_path(p.path))):
        line = _line_for(problem.path, lines)
        where = f"{path}:{line}" if line is not None else str(path)
        message = f"{where}: {schema.format_path(problem.path)}: expected {problem.expected}"
        if problem.found is not None:
            message += f"; found {problem.found}"
        if problem.hint:
            message += f" ({problem.hint})"
        rendered.append(message)
    if len(rendered) == 1:
        return rendered[0]
    return f"{len(rendered)} problems in {path}:\n" + "\n".join(rendered)


# -- Rules the schema cannot express ------------------------------------------------------


def _check_semantics(data: Mapping[str, Any], path: Path) -> list[Problem]:
    problems: list[Problem] = []
    egress = data["egress"]
    for i, rule in enumerate(egress["allow"]):
        if is_ip_literal(rule["host"].removeprefix("*.")):
            problems.append(Problem(("egress", "allow", i, "host"), "a DNS name (IP addresses are always refused)",
                                    f"string {rule['host']!r}"))
        if (rule["max_label_entropy"] != contract.DEFAULT_MAX_LABEL_ENTROPY
                and not rule["host"].startswith("*.")):
            problems.append(Problem(("egress", "allow", i, "max_label_entropy"),
                                    "no max_label_entropy on an exact host (it applies to *. rules only)",
                                    f"number {rule['max_label_entropy']!r}"))
    for i, route in enumerate(egress["routes"]):
        at = ("egress", "routes", i)
        auth = route["auth"]
        if auth["scheme"] == "header" and "header" not in auth:
            problems.append(Problem((*at, "auth", "header"), "a header name, because scheme is header", "nothing"))
        if auth["scheme"] != "header" and "header" in auth:
            problems.append(Problem((*at, "auth", "header"), "no header (it is only used with scheme header)",
                                    f"string {auth['header']!r}"))
        if auth["scheme"] != "basic" and "username" in auth:
            problems.append(Problem((*at, "auth", "username"), "no username (it is only used with scheme basic)",
                                    f"string {auth['username']!r}"))
        if auth["scheme"] == "header" and auth.get("header") in contract.RESERVED_HEADERS:
            problems.append(Problem((*at, "auth", "header"), "a credential header name",
                                    f"string {auth['header']!r}"))
        if not _route_is_allowed(route, egress["allow"]):
            problems.append(Problem((*at, "host"), "a host that an egress.allow rule allows",
                                    f"string {route['host']!r}", "add an egress.allow rule for it"))
        if auth["token_ref"] in data["agent"]["env"]:
            problems.append(Problem(("agent", "env", auth["token_ref"]),
                                    "no value: the agent gets a placeholder for a credential route's token_ref",
                                    f"a value for {auth['token_ref']}"))
    for name in data["agent"]["env"]:
        if name in RESERVED_AGENT_ENV:
            problems.append(Problem(("agent", "env", name), "a variable bottle does not set itself",
                                    f"{name}, which bottle sets to route traffic through the proxy"))
    if egress["capture"] == "transparent":
        ports = {80, 443, *(port for rule in egress["allow"] for port in rule["ports"])}
        if len(ports) > contract.MAX_CAPTURED_PORTS:
            problems.append(Problem(("egress", "capture"), f"at most {contract.MAX_CAPTURED_PORTS} distinct ports "
                                    "in egress.allow with transparent capture (the proxy listens for each)",
                                    f"{len(ports)} ports (80 and 443 included)"))
    problems.extend(_check_git(data))
    for i, alias in enumerate(data.get("kubernetes", {}).get("proxy_host_aliases", [])):
        if not _is_ip(alias["ip"]):
            problems.append(Problem(("kubernetes", "proxy_host_aliases", i, "ip"), "an IP address such as 10.0.0.7",
                                    f"string {alias['ip']!r}"))
    if data["agent"].get("user", "").split(":")[0] == "0":
        problems.append(Problem(("agent", "user"), "a non-root UID:GID", f"string {data['agent']['user']!r}",
                                "the agent never runs as root; leave agent.user out to run as the workspace's "
                                "owner, or chown the workspace to a user and name that user here"))
    return problems


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_git(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    rules = data["egress"]["allow"]
    seen: dict[str, int] = {}
    for i, repo in enumerate(data.get("git", {}).get("repositories", [])):
        at = ("git", "repositories", i, "repo")
        if repo["repo"] in seen:
            problems.append(Problem(at, "each repository once", f"string {repo['repo']!r} again "
                                    f"(first at git.repositories[{seen[repo['repo']]}])"))
        seen.setdefault(repo["repo"], i)
        host = repo["repo"].split("/", 1)[0]
        if not any(host_matches(rule["host"], host) for rule in rules):
            problems.append(Problem(at, "a repository on a host that an egress.allow rule allows",
                                    f"string {repo['repo']!r}", f"add an egress.allow rule for {host}"))
    for i, deny in enumerate(data.get("github", {}).get("deny", [])):
        at = ("github", "deny", i)
        if ("path" in deny) == ("graphql" in deny):
            problems.append(Problem(at, "either path (REST) or graphql (a mutation field)",
                                    "both" if "path" in deny else "neither"))
        elif "method" in deny and "graphql" in deny:
            problems.append(Problem((*at, "method"), "no method with graphql (GraphQL is POST /graphql)",
                                    f"string {deny['method']!r}"))
    return problems


_NOT_WITH_PASSTHROUGH = {
    "methods": "no methods on a tls: passthrough rule (the proxy does not decrypt it, so it sees no requests)",
    "paths": "no paths on a tls: passthrough rule (the proxy does not decrypt it, so it sees no paths)",
    "scan_body": "no scan_body on a tls: passthrough rule (nothing of it is scanned)",
}


def _check_passthrough(document: Mapping[str, Any], data: Mapping[str, Any]) -> list[Problem]:
    """A passthrough rule is host and port only: what the proxy cannot see, it cannot rule on."""
    problems: list[Problem] = []
    rules = data["egress"]["allow"]
    raw_rules = document.get("egress", {}).get("allow", [])
    for i, rule in enumerate(rules):
        if rule["tls"] != "passthrough":
            continue
        at = ("egress", "allow", i)
        for key, expected in _NOT_WITH_PASSTHROUGH.items():
            if key in raw_rules[i]:
                problems.append(Problem((*at, key), expected, schema.describe(raw_rules[i][key])))
        for j, other in enumerate(rules):
            if j != i and _hosts_overlap(rule["host"], other["host"]) and set(rule["ports"]) & set(other["ports"]):
                problems.append(Problem((*at, "host"), "a host no other egress.allow rule covers on the same port "
                                        f"(egress.allow[{j}] covers {other['host']}; decrypt it or pass it through, "
                                        "not both)", f"string {rule['host']!r}"))
        for j, route in enumerate(data["egress"]["routes"]):
            if _hosts_overlap(rule["host"], route["host"]):
                problems.append(Problem(("egress", "routes", j, "host"), "a host whose TLS the proxy decrypts "
                                        f"(egress.allow[{i}] passes {rule['host']} through, so no credential "
                                        "can be injected)", f"string {route['host']!r}"))
        for j, repo in enumerate(data.get("git", {}).get("repositories", [])):
            if host_matches(rule["host"], repo["repo"].split("/", 1)[0]):
                problems.append(Problem(("git", "repositories", j, "repo"), "a repository on a host whose TLS the "
                                        f"proxy decrypts (egress.allow[{i}] passes it through, so git cannot be "
                                        "checked)", f"string {repo['repo']!r}"))
    return problems


def _hosts_overlap(a: str, b: str) -> bool:
    """Some host name matches both patterns."""
    if a == b or host_matches(a, b.removeprefix("*.")) or host_matches(b, a.removeprefix("*.")):
        return True
    return a.startswith("*.") and b.startswith("*.") and (a.endswith(b[1:]) or b.endswith(a[1:]))


def _route_is_allowed(route: Mapping[str, Any], rules: list[Mapping[str, Any]]) -> bool:
    host = route["host"]
    for rule in rules:
        if host.startswith("*."):
            if rule["host"] == host or (rule["host"].startswith("*.") and host.endswith(rule["host"][1:])):
                return True
        elif host_matches(rule["host"], host):
            return True
    return False
