"""The backend-agnostic plan: frozen data built from a manifest, with no I/O.

`build_plan(manifest, env=..., run_id=...)` is the only place a manifest becomes plan
data. The environment is passed in (tests pass `env={}`): the plan records *whether*
each credential is present, never its value. Secrets made at launch (the scanner
token, the agent's placeholders, the CA) are not part of a plan, so a plan can always
be printed.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from bottle import __version__
from bottle.errors import ManifestError
from bottle.manifest import Manifest
from bottle.mitm.policy import AllowRule, CapturedPort, GithubDeny, GitPolicy, GitRepository, Route, to_document

PROXY_IMAGE = f"bottle/proxy:{__version__}"
PROXY_IMAGE_ENV = "BOTTLE_PROXY_IMAGE"


def proxy_image(env: Mapping[str, str]) -> str:
    """The proxy image `bottle build` tags and `bottle start` runs: $BOTTLE_PROXY_IMAGE, or
    bottle/proxy:<version> (e.g. to run a copy pushed to your own registry)."""
    return env.get(PROXY_IMAGE_ENV) or PROXY_IMAGE
PROXY_PORT = 8080
SCANNER_PORT = 9090
DNS_PORT = 53
# Transparent capture (docs/prds/0009): the proxy's listeners for captured ports are numbered
# from here, clear of its own ports; DNS answers every allowed name with one address from
# the benchmarking range (RFC 2544), which is no real host's, outside every container network.
TRANSPARENT_LISTEN_BASE = 15001
CAPTURE_DNS_ADDRESS = "198.18.0.1"
ALWAYS_CAPTURED = (80, 443)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resources:
    cpus: float
    memory: str | int
    """As the manifest gives it: a size such as 512m or 4g (k, m, g are powers of 1024), or bytes."""
    pids: int

    @property
    def memory_bytes(self) -> int:
        if isinstance(self.memory, int):
            return self.memory
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        suffix = self.memory[-1].lower()
        return int(self.memory[:-1]) * units[suffix] if suffix in units else int(self.memory)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkspaceOwner:
    """Who owns the workspace directory on the host (its stat), as the CLI found it."""

    uid: int
    gid: int
    mode: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


# The agent image's own user (Dockerfile.agent): uid 1000 with a home in /etc/passwd.
DEFAULT_AGENT_USER = "1000:1000"
# Any other uid has no home in the image, so HOME points here, made for it at start.
AGENT_HOME = "/home/bottle"
USER_SOURCES = ("manifest", "workspace owner", "default")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSpec:
    image: str
    command: tuple[str, ...]
    workdir: str
    workspace: str | None
    user: str
    env: tuple[tuple[str, str], ...]
    resources: Resources
    workspace_read_only: bool = False
    workspace_owner: str | None = None
    """`uid:gid` of the workspace on the host, when it was looked at."""
    user_source: str = "default"  # one of USER_SOURCES: where `user` comes from
    home: str | None = None
    """HOME made for a user the image does not know, or None: the image's own."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EgressSpec:
    """`egress`: the allow rules and credential routes are the policy contract's own types.
    `present_token_refs` records which credentials the environment holds (never a value)."""

    mode: str
    allow: tuple[AllowRule, ...]
    routes: tuple[Route, ...]
    upstream_ca: str | None
    present_token_refs: frozenset[str] = frozenset()
    capture: str = "proxy"  # proxy | transparent

    @property
    def token_refs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.token_ref for route in self.routes))

    @property
    def captured_ports(self) -> tuple[CapturedPort, ...]:
        """With transparent capture: 80, 443 and every port a rule names, each with the
        proxy listener it is redirected to. Empty with proxy capture."""
        if self.capture != "transparent":
            return ()
        ports = sorted({*ALWAYS_CAPTURED, *(port for rule in self.allow for port in rule.ports)})
        return tuple(CapturedPort(port=port, listen=TRANSPARENT_LISTEN_BASE + i) for i, port in enumerate(ports))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScannerSpec:
    image: str
    mode: str
    responses: str = "warn"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DockerOptions:
    egress_network: str | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostAlias:
    ip: str
    hostnames: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class KubernetesOptions:
    """`kubernetes`: where the Kubernetes backend creates a bottle. None means the user's
    kubeconfig decides (its current context, that context's namespace)."""

    namespace: str | None = None
    context: str | None = None
    credentials_secret: str | None = None
    proxy_host_aliases: tuple[HostAlias, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class BottlePlan:
    """Everything one bottle is, before any backend turns it into resources."""

    name: str
    bottle_id: str
    manifest: str
    agent: AgentSpec
    egress: EgressSpec
    scanner: ScannerSpec
    proxy_image: str
    docker: DockerOptions
    kubernetes: KubernetesOptions = KubernetesOptions()
    git: GitPolicy | None = None
    github_deny: tuple[GithubDeny, ...] = ()

    @property
    def missing_credentials(self) -> tuple[str, ...]:
        return tuple(ref for ref in self.egress.token_refs if ref not in self.egress.present_token_refs)


def new_run_id() -> str:
    return secrets.token_hex(3)


def build_plan(
    manifest: Manifest,
    *,
    env: Mapping[str, str],
    run_id: str,
    command: tuple[str, ...] | None = None,
    proxy_image: str = PROXY_IMAGE,
    mode: str | None = None,
    stat_workspace: Callable[[str], WorkspaceOwner] | None = None,
) -> BottlePlan:
    """`mode` overrides egress.mode for one run (`bottle start --mode`). `stat_workspace`
    says who owns the workspace on the host (bottle.workspace.owner_of); without it the
    owner is unknown and the agent runs as agent.user or the default."""
    if not re.fullmatch(r"[a-z0-9]{1,16}", run_id):
        raise ValueError(f"run id must be 1-16 lower-case letters or digits, got {run_id!r}")
    data: Mapping[str, Any] = manifest.data
    agent = data["agent"]
    egress = data["egress"]
    workspace, read_only = _workspace(manifest, agent.get("workspace"))
    owner = None
    if workspace is not None and stat_workspace is not None:
        try:
            owner = stat_workspace(workspace)
        except OSError as e:
            raise ManifestError(f"{manifest.path}: agent.workspace: {workspace}: {e.strerror}",
                                tip="the workspace is a host directory, relative to the manifest file") from None
    user, source = agent_user(agent.get("user"), workspace=workspace, owner=owner, read_only=read_only,
                              manifest=manifest)
    upstream_ca = str(manifest.resolve(egress["upstream_ca"])) if "upstream_ca" in egress else None
    return BottlePlan(
        name=data["name"],
        bottle_id=f"bottle-{data['name']}-{run_id}",
        manifest=str(manifest.path.resolve()),
        agent=AgentSpec(
            image=agent["image"],
            command=tuple(command) if command else tuple(agent["command"]),
            workdir=agent["workdir"],
            workspace=workspace,
            workspace_read_only=read_only,
            workspace_owner=str(owner) if owner is not None else None,
            user=user,
            user_source=source,
            home=AGENT_HOME if user.split(":")[0] != DEFAULT_AGENT_USER.split(":")[0]
            and "HOME" not in agent["env"] else None,
            env=tuple(sorted(agent["env"].items())),
            resources=Resources(
                cpus=agent["resources"]["cpus"],
                memory=agent["resources"]["memory"],
                pids=agent["resources"]["pids"],
            ),
        ),
        egress=EgressSpec(
            mode=mode or egress["mode"],
            allow=tuple(
                AllowRule(
                    id=f"egress.allow[{i}]",
                    host=rule["host"],
                    methods=_optional_tuple(rule.get("methods")),
                    paths=_optional_tuple(rule.get("paths")),
                    ports=tuple(rule["ports"]),
                    private_upstream=rule["private_upstream"],
                    scan_body=rule["scan_body"],
                    max_label_entropy=float(rule["max_label_entropy"]),
                    tls=rule["tls"],
                )
                for i, rule in enumerate(egress["allow"])
            ),
            routes=tuple(
                Route(
                    id=f"egress.routes[{i}]",
                    host=route["host"],
                    methods=_optional_tuple(route.get("methods")),
                    paths=_optional_tuple(route.get("paths")),
                    scheme=route["auth"]["scheme"],
                    header=route["auth"].get("header"),
                    username=route["auth"].get("username"),
                    token_ref=route["auth"]["token_ref"],
                )
                for i, route in enumerate(egress["routes"])
            ),
            upstream_ca=upstream_ca,
            present_token_refs=frozenset(
                r["auth"]["token_ref"] for r in egress["routes"] if env.get(r["auth"]["token_ref"])
            ),
            capture=egress["capture"],
        ),
        scanner=ScannerSpec(image=data["scanner"]["image"], mode=data["scanner"]["mode"],
                            responses=data["scanner"]["responses"]),
        proxy_image=proxy_image,
        docker=DockerOptions(egress_network=data["docker"].get("egress_network")),
        kubernetes=_kubernetes_options(data.get("kubernetes", {})),
        git=_git_policy(data["git"]) if "git" in data else None,
        github_deny=tuple(
            GithubDeny(id=f"github.deny[{i}]", method=d.get("method"), path=d.get("path"),
                       graphql=d.get("graphql"), reason=d["reason"])
            for i, d in enumerate(data.get("github", {}).get("deny", []))
        ),
    )


def _workspace(manifest: Manifest, value: str | Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """`agent.workspace` is a path, or `{path, read_only}`."""
    if value is None:
        return None, False
    if isinstance(value, str):
        return str(manifest.resolve(value)), False
    return str(manifest.resolve(value["path"])), value["read_only"]


def agent_user(explicit: str | None, *, workspace: str | None, owner: WorkspaceOwner | None, read_only: bool,
               manifest: Manifest) -> tuple[str, str]:
    """Who the agent runs as, and where that comes from (docs/prds/0014): agent.user when
    the manifest sets it; else the workspace's owner, so the agent can write its workspace
    and what it writes is the owner's. A root-owned workspace is refused (the agent never
    runs as root) unless it is mounted read-only or anyone may write it."""
    if explicit is not None:
        return explicit, "manifest"
    if owner is None:
        return DEFAULT_AGENT_USER, "default"
    if owner.uid != 0:
        return str(owner), "workspace owner"
    if read_only or owner.mode & 0o002:
        return DEFAULT_AGENT_USER, "default"
    raise ManifestError(
        f"{manifest.path}: agent.workspace: {workspace} is owned by root, and the agent never runs as root: "
        f"as the default user {DEFAULT_AGENT_USER} it could not write there",
        tip=f"make the workspace a user's (e.g. sudo chown -R 1000:1000 {workspace}), or set agent.user to a "
        "non-root UID:GID that may write it, or mount it read-only "
        "(agent.workspace: {path: ..., read_only: true})",
    )


def _git_policy(git: Mapping[str, Any]) -> GitPolicy:
    return GitPolicy(
        repositories=tuple(
            GitRepository(id=f"git.repositories[{i}]", host=repo["repo"].split("/", 1)[0],
                          path=repo["repo"].split("/", 1)[1], access=repo["access"])
            for i, repo in enumerate(git["repositories"])
        ),
        protected_branches=tuple(git["protected_branches"]),
        push_branches=_optional_tuple(git.get("push_branches")),
        allow_force_push=git["allow_force_push"],
        allow_branch_deletion=git["allow_branch_deletion"],
    )


def _kubernetes_options(kubernetes: Mapping[str, Any]) -> KubernetesOptions:
    return KubernetesOptions(
        namespace=kubernetes.get("namespace"),
        context=kubernetes.get("context"),
        credentials_secret=kubernetes.get("credentials_secret"),
        proxy_host_aliases=tuple(
            HostAlias(ip=alias["ip"], hostnames=tuple(alias["hostnames"]))
            for alias in kubernetes.get("proxy_host_aliases", [])
        ),
    )


def _optional_tuple(value: list[Any] | None) -> tuple[Any, ...] | None:
    return tuple(value) if value is not None else None


# 2: the proxy's role is `proxy` (was `mitmproxy`), its image bottle/proxy, and
#    `egress.rules` is `egress.allow` (docs/dry-run-json.md).
DRY_RUN_SCHEMA_VERSION = 2


def bottle_document(plan: BottlePlan, *, backend: str, memory: str) -> dict[str, Any]:
    """The backend-agnostic head of the versioned dry-run JSON (docs/dry-run-json.md); each
    backend's plan adds what it creates. `memory` is the agent's limit as that backend
    writes it. Changing a field's meaning or removing one needs a new `schema_version`;
    adding a field does not."""
    return {
        "schema_version": DRY_RUN_SCHEMA_VERSION,
        "bottle": {
            "name": plan.name,
            "id": plan.bottle_id,
            "manifest": plan.manifest,
            "backend": backend,
        },
        "agent": {
            "image": plan.agent.image,
            "command": list(plan.agent.command),
            "workdir": plan.agent.workdir,
            "workspace": plan.agent.workspace,
            "workspace_read_only": plan.agent.workspace_read_only,
            "workspace_owner": plan.agent.workspace_owner,
            "user": plan.agent.user,
            "user_source": plan.agent.user_source,
            "home": plan.agent.home,
            "resources": {
                "cpus": plan.agent.resources.cpus,
                "memory": memory,
                "pids": plan.agent.resources.pids,
            },
        },
        "egress": {
            "mode": plan.egress.mode,
            "mitm": {"enabled": True, "ca_fingerprint": None},
            "allow": to_document(plan.egress.allow),
            "routes": [{**to_document(r), "token_present": r.token_ref in plan.egress.present_token_refs}
                       for r in plan.egress.routes],
            "upstream_ca": plan.egress.upstream_ca,
            "capture": plan.egress.capture,
            "dns": "every lookup from the agent is answered NXDOMAIN by the proxy",
        },
        "git": to_document(plan.git),
        "github": {"deny": to_document(plan.github_deny)} if plan.github_deny else None,
        "scanner": {"image": plan.scanner.image, "mode": plan.scanner.mode, "responses": plan.scanner.responses},
    }
