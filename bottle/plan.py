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
from collections.abc import Mapping
from typing import Any

from bottle import __version__
from bottle.manifest import Manifest

PLAN_SCHEMA_VERSION = 1
PROXY_IMAGE = f"bottle/egress-proxy:{__version__}"
PROXY_PORT = 8080
SCANNER_PORT = 9090


@dataclasses.dataclass(frozen=True, kw_only=True)
class AllowRule:
    """One allowed destination (`egress.allow[i]`)."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    ports: tuple[int, ...]
    private_upstream: bool
    scan_body: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class CredentialRoute:
    """Where the proxy injects a real credential (`egress.routes[i]`)."""

    id: str
    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    scheme: str
    header: str | None
    username: str | None
    token_ref: str
    token_present: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resources:
    cpus: float
    memory: str
    pids: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSpec:
    image: str
    command: tuple[str, ...]
    workdir: str
    workspace: str | None
    user: str
    env: tuple[tuple[str, str], ...]
    resources: Resources


@dataclasses.dataclass(frozen=True, kw_only=True)
class EgressSpec:
    mode: str
    rules: tuple[AllowRule, ...]
    routes: tuple[CredentialRoute, ...]
    upstream_ca: str | None

    @property
    def token_refs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(route.token_ref for route in self.routes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScannerSpec:
    image: str
    mode: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class DockerOptions:
    egress_network: str | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GitRepository:
    """A repository the agent may use (`git.repositories[i]`); path is owner/repo, lower case."""

    id: str
    host: str
    path: str
    access: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class GitSpec:
    """Git smart-HTTP policy (`git`); always enforced, even in discover mode."""

    repositories: tuple[GitRepository, ...]
    protected_branches: tuple[str, ...]
    push_branches: tuple[str, ...] | None
    allow_force_push: bool
    allow_branch_deletion: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class GithubDeny:
    """A GitHub API refusal added to the defaults (`github.deny[i]`)."""

    id: str
    method: str | None
    path: str | None
    graphql: str | None
    reason: str


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
    git: GitSpec | None = None
    github_deny: tuple[GithubDeny, ...] = ()

    @property
    def missing_credentials(self) -> tuple[str, ...]:
        present = {r.token_ref for r in self.egress.routes if r.token_present}
        return tuple(ref for ref in self.egress.token_refs if ref not in present)


def git_document(plan: BottlePlan) -> dict[str, Any] | None:
    """The `git` section as plain data, for the policy file and the dry-run."""
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


def github_document(plan: BottlePlan) -> dict[str, Any] | None:
    return {"deny": [dataclasses.asdict(d) for d in plan.github_deny]} if plan.github_deny else None


def new_run_id() -> str:
    return secrets.token_hex(3)


def build_plan(
    manifest: Manifest,
    *,
    env: Mapping[str, str],
    run_id: str,
    command: tuple[str, ...] | None = None,
    proxy_image: str = PROXY_IMAGE,
) -> BottlePlan:
    if not re.fullmatch(r"[a-z0-9]{1,16}", run_id):
        raise ValueError(f"run id must be 1-16 lower-case letters or digits, got {run_id!r}")
    data: Mapping[str, Any] = manifest.data
    agent = data["agent"]
    egress = data["egress"]
    workspace = str(manifest.resolve(agent["workspace"])) if "workspace" in agent else None
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
            user=agent["user"],
            env=tuple(sorted(agent["env"].items())),
            resources=Resources(
                cpus=agent["resources"]["cpus"],
                memory=_docker_memory(agent["resources"]["memory"]),
                pids=agent["resources"]["pids"],
            ),
        ),
        egress=EgressSpec(
            mode=egress["mode"],
            rules=tuple(
                AllowRule(
                    id=f"egress.allow[{i}]",
                    host=rule["host"],
                    methods=_optional_tuple(rule.get("methods")),
                    paths=_optional_tuple(rule.get("paths")),
                    ports=tuple(rule["ports"]),
                    private_upstream=rule["private_upstream"],
                    scan_body=rule["scan_body"],
                )
                for i, rule in enumerate(egress["allow"])
            ),
            routes=tuple(
                CredentialRoute(
                    id=f"egress.routes[{i}]",
                    host=route["host"],
                    methods=_optional_tuple(route.get("methods")),
                    paths=_optional_tuple(route.get("paths")),
                    scheme=route["auth"]["scheme"],
                    header=route["auth"].get("header"),
                    username=route["auth"].get("username"),
                    token_ref=route["auth"]["token_ref"],
                    token_present=bool(env.get(route["auth"]["token_ref"])),
                )
                for i, route in enumerate(egress["routes"])
            ),
            upstream_ca=upstream_ca,
        ),
        scanner=ScannerSpec(image=data["scanner"]["image"], mode=data["scanner"]["mode"]),
        proxy_image=proxy_image,
        docker=DockerOptions(egress_network=data["docker"].get("egress_network")),
        git=_git_spec(data["git"]) if "git" in data else None,
        github_deny=tuple(
            GithubDeny(id=f"github.deny[{i}]", method=d.get("method"), path=d.get("path"),
                       graphql=d.get("graphql"), reason=d["reason"])
            for i, d in enumerate(data.get("github", {}).get("deny", []))
        ),
    )


def _git_spec(git: Mapping[str, Any]) -> GitSpec:
    return GitSpec(
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


def _optional_tuple(value: list[Any] | None) -> tuple[Any, ...] | None:
    return tuple(value) if value is not None else None


def _docker_memory(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return value.lower()
