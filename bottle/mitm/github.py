"""GitHub API policy on api.github.com: refusals by REST method and path or GraphQL mutation
field, and the git push policy applied to the API's own ways to write a branch.

Pure functions, no mitmproxy imports. Three layers, in order:
1. `DEFAULT_DENY` (always) and the manifest's `github.deny`: REST paths (and their
   `/repositories/{id}`, `/organizations/{org}` and `/teams/{id}` aliases) and GraphQL
   mutation fields.
2. With a `git` section, the repositories it names on github.com are the only ones the
   API may write; git data (contents, refs, blobs, trees, commits, tags) needs
   `access: push`.
3. With a `git` section, a write that moves a branch obeys `protected_branches`,
   `push_branches` and `allow_branch_deletion` exactly as a git push does (git.check_update);
   a write whose branch or repository bottle cannot know is refused.
A request that cannot be read (bad JSON, a key given twice, GraphQL it cannot follow, a
variable without a value) is refused. See docs/prds/0004-git-push-policy.md.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from bottle.mitm import git, graphql
from bottle.mitm.graphql import GraphQLSyntaxError
from bottle.mitm.policy import GitPolicy, GithubDeny, clean_path

HOST = "api.github.com"
GIT_HOST = "github.com"  # the git.repositories host whose repositories api.github.com serves
READS = ("GET", "HEAD", "OPTIONS")
WRITES = ("PUT", "POST", "PATCH", "DELETE")


@dataclass(frozen=True)
class Refusal:
    rule_id: str
    reason: str


# -- the default refusals -------------------------------------------------------------
#
# One entry per name (rule id `github.deny.default.<name>`): the reason, REST operations as
# "METHOD /path" (ANY = every write method; `*` one segment, `**` one or more; a trailing
# "[/**]" means the path and everything under it) and GraphQL mutation fields. Sources: the
# REST endpoint list of octokit/plugin-rest-endpoint-methods.js (src/generated/endpoints.ts)
# and GitHub's GraphQL schema (octokit/graphql-schema, type Mutation); docs/manifest.md
# lists every entry.

_DEFAULTS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("merge_pull_request", "merging a pull request is not allowed",
     ("PUT /repos/*/*/pulls/*/merge",),
     ("mergePullRequest", "enablePullRequestAutoMerge", "enqueuePullRequest")),
    ("merge_branch", "merging branches is not allowed",
     ("POST /repos/*/*/merges",), ("mergeBranch",)),
    ("create_release", "creating a release is not allowed",
     ("POST /repos/*/*/releases",), ("createRelease",)),
    # Publishing a draft release creates its tag.
    ("update_release", "publishing or changing a release is not allowed",
     ("PATCH /repos/*/*/releases/*",), ()),
    # The API's way to force-push or delete a branch; git pushes are checked by git.py.
    ("update_ref", "updating or deleting a ref through the API is not allowed (use git push)",
     ("ANY /repos/*/*/git/refs/**",), ("updateRef", "updateRefs", "deleteRef")),
    ("delete_repository", "deleting a repository is not allowed",
     ("DELETE /repos/*/*",), ()),
    ("branch_protection", "changing branch protection is not allowed",
     ("ANY /repos/*/*/branches/**/protection[/**]",),
     ("createBranchProtectionRule", "updateBranchProtectionRule", "deleteBranchProtectionRule")),
    ("rulesets", "changing rulesets is not allowed",
     ("ANY /repos/*/*/rulesets[/**]", "ANY /orgs/*/rulesets[/**]", "ANY /repos/*/*/tags/protection[/**]"),
     ("createRepositoryRuleset", "updateRepositoryRuleset", "deleteRepositoryRuleset")),
    ("repository_settings", "changing repository settings or visibility is not allowed",
     ("PATCH /repos/*/*", "POST /repos/*/*/transfer", "ANY /repos/*/*/pages[/**]",
      "ANY /repos/*/*/actions/permissions[/**]", "ANY /repos/*/*/actions/oidc/**", "ANY /repos/*/*/properties/values",
      "ANY /repos/*/*/vulnerability-alerts", "ANY /repos/*/*/automated-security-fixes",
      "ANY /repos/*/*/private-vulnerability-reporting", "ANY /repos/*/*/code-scanning/default-setup",
      "ANY /repos/*/*/immutable-releases"),
     ("updateRepository", "archiveRepository", "unarchiveRepository", "updateRepositoryWebCommitSignoffSetting")),
    # A repository made from a template may be public: a copy of a private repository's files.
    ("template_copy", "creating a repository from a template is not allowed",
     ("POST /repos/*/*/generate",), ("cloneTemplateRepository",)),
    ("organization_settings", "changing organization or enterprise settings is not allowed",
     ("PATCH /orgs/*", "DELETE /orgs/*", "ANY /orgs/*/actions/permissions[/**]", "ANY /orgs/*/actions/oidc/**",
      "ANY /orgs/*/properties/**", "ANY /orgs/*/settings/**", "ANY /orgs/*/code-security/**",
      "ANY /orgs/*/dependabot/repository-access[/**]", "ANY /enterprises/**"),
     ("updateOrganizationAllowPrivateRepositoryForkingSetting", "updateOrganizationWebCommitSignoffSetting",
      "updateEnterpriseAllowPrivateRepositoryForkingSetting", "updateEnterpriseDefaultRepositoryPermissionSetting",
      "updateEnterpriseDeployKeySetting", "updateEnterpriseMembersCanChangeRepositoryVisibilitySetting",
      "updateEnterpriseMembersCanCreateRepositoriesSetting", "updateEnterpriseMembersCanDeleteRepositoriesSetting",
      "updateEnterpriseMembersCanInviteCollaboratorsSetting",
      "updateEnterpriseMembersCanUpdateProtectedBranchesSetting",
      "updateEnterpriseTwoFactorAuthenticationRequiredSetting",
      "updateEnterpriseTwoFactorAuthenticationDisallowedMethodsSetting",
      "createIpAllowListEntry", "updateIpAllowListEntry", "deleteIpAllowListEntry", "updateIpAllowListEnabledSetting",
      "updateIpAllowListForInstalledAppsEnabledSetting", "setEnterpriseIdentityProvider",
      "removeEnterpriseIdentityProvider", "regenerateEnterpriseIdentityProviderRecoveryCodes",
      "transferEnterpriseOrganization", "removeEnterpriseOrganization")),
    ("deploy_keys", "adding or removing deploy keys is not allowed",
     ("ANY /repos/*/*/keys[/**]",), ()),
    ("user_credentials", "changing the account's keys or e-mail addresses is not allowed",
     ("ANY /user/keys[/**]", "ANY /user/gpg_keys[/**]", "ANY /user/ssh_signing_keys[/**]", "ANY /user/emails[/**]"),
     ()),
    ("webhooks", "creating or changing webhooks is not allowed",
     ("ANY /repos/*/*/hooks[/**]", "ANY /orgs/*/hooks[/**]"), ()),
    ("collaborators", "changing collaborators, members, teams or invitations is not allowed",
     ("ANY /repos/*/*/collaborators/**", "ANY /repos/*/*/invitations/**", "ANY /user/repository_invitations/**",
      "ANY /user/memberships/orgs/**", "ANY /user/installations/**", "ANY /orgs/*/members/**",
      "ANY /orgs/*/memberships/**", "ANY /orgs/*/invitations[/**]", "ANY /orgs/*/outside_collaborators/**",
      "ANY /orgs/*/organization-roles/**", "ANY /orgs/*/security-managers/**",
      "ANY /orgs/*/personal-access-token-requests[/**]", "ANY /orgs/*/personal-access-tokens[/**]",
      "POST /orgs/*/teams", "PATCH /orgs/*/teams/*", "DELETE /orgs/*/teams/*", "ANY /orgs/*/teams/*/members/**",
      "ANY /orgs/*/teams/*/memberships/**", "ANY /orgs/*/teams/*/repos/**"),
     ("updateTeamsRepository", "removeOutsideCollaborator", "inviteEnterpriseAdmin", "inviteEnterpriseMember",
      "acceptEnterpriseAdministratorInvitation", "acceptEnterpriseMemberInvitation", "addEnterpriseOrganizationMember",
      "removeEnterpriseAdmin", "removeEnterpriseMember", "updateEnterpriseAdministratorRole",
      "updateEnterpriseOwnerOrganizationRole", "accessUserNamespaceRepository", "grantMigratorRole",
      "grantEnterpriseOrganizationsMigratorRole")),
    ("actions_secrets", "changing Actions, Dependabot or Codespaces secrets or variables is not allowed",
     ("ANY /repos/*/*/actions/secrets/**", "ANY /repos/*/*/actions/variables[/**]",
      "ANY /repos/*/*/environments/*/secrets/**", "ANY /repos/*/*/environments/*/variables[/**]",
      "ANY /repos/*/*/dependabot/secrets/**", "ANY /repos/*/*/codespaces/secrets/**",
      "ANY /orgs/*/actions/secrets/**", "ANY /orgs/*/actions/variables[/**]", "ANY /orgs/*/dependabot/secrets/**",
      "ANY /orgs/*/codespaces/secrets/**", "ANY /orgs/*/private-registries[/**]", "ANY /user/codespaces/secrets/**"),
     ()),
    # A runner the agent registers would receive jobs, with their secrets.
    ("actions_runners", "registering or changing self-hosted runners is not allowed",
     ("ANY /repos/*/*/actions/runners/**", "ANY /orgs/*/actions/runners/**", "ANY /orgs/*/actions/runner-groups[/**]",
      "ANY /orgs/*/actions/hosted-runners[/**]"), ()),
    ("environments", "changing deployment environments is not allowed",
     ("PUT /repos/*/*/environments/*", "DELETE /repos/*/*/environments/*",
      "ANY /repos/*/*/environments/*/deployment-branch-policies[/**]",
      "ANY /repos/*/*/environments/*/deployment_protection_rules[/**]"),
     ("createEnvironment", "updateEnvironment", "deleteEnvironment")),
    ("deployment_approval", "approving workflow runs or deployments is not allowed",
     ("POST /repos/*/*/actions/runs/*/approve", "POST /repos/*/*/actions/runs/*/pending_deployments",
      "POST /repos/*/*/actions/runs/*/deployment_protection_rule"), ("approveDeployments",)),
    ("workflow_dispatch", "dispatching, enabling or disabling workflows is not allowed",
     ("POST /repos/*/*/actions/workflows/*/dispatches", "POST /repos/*/*/dispatches",
      "PUT /repos/*/*/actions/workflows/*/enable", "PUT /repos/*/*/actions/workflows/*/disable"), ()),
    ("gists", "creating or changing gists is not allowed", ("ANY /gists[/**]",), ()),
    ("push_protection_bypass", "bypassing secret scanning push protection is not allowed",
     ("POST /repos/*/*/secret-scanning/push-protection-bypasses",), ()),
)


def _expand(operation: str) -> Iterable[tuple[str, str]]:
    method, path = operation.split(" ")
    base = path.removesuffix("[/**]")
    paths = (base, base + "/**") if base != path else (path,)
    for m in WRITES if method == "ANY" else (method,):
        for p in paths:
            yield m, p


def _default_rules() -> tuple[GithubDeny, ...]:
    out: list[GithubDeny] = []
    for name, reason, rest, mutations in _DEFAULTS:
        rule_id = f"github.deny.default.{name}"
        out += [GithubDeny(id=rule_id, method=m, path=p, graphql=None, reason=reason)
                for operation in rest for m, p in _expand(operation)]
        out += [GithubDeny(id=rule_id, method=None, path=None, graphql=g, reason=reason) for g in mutations]
    return tuple(out)


DEFAULT_DENY: tuple[GithubDeny, ...] = _default_rules()


# -- REST paths -------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    regex = []
    for part in pattern.strip("/").split("/"):
        regex.append("[^/]+(?:/[^/]+)*" if part == "**" else
                     "".join("[^/]*" if c == "*" else re.escape(c) for c in part))
    return re.compile("/" + "/".join(regex), re.IGNORECASE)


def path_glob_matches(pattern: str, path: str) -> bool:
    """`*` is one path segment, `**` one or more; case-insensitive."""
    return _glob_regex(pattern).fullmatch(path) is not None


@functools.lru_cache(maxsize=4096)
def alias_patterns(pattern: str) -> tuple[str, ...]:
    """pattern and the forms GitHub also serves it under: `/repositories/{id}` for
    `/repos/{owner}/{repo}`, `/organizations/{id}` for `/orgs/{org}`, and `/teams/{id}` or
    `/organizations/{id}/team/{id}` for `/orgs/{org}/teams/{slug}`. An id could be any
    owner or name, so the alias matches whatever the pattern says of them."""
    parts = pattern.strip("/").split("/")
    out = [pattern]
    if parts[0].lower() == "repos" and len(parts) >= 3:
        if parts[1] == "**":  # owner, name and maybe more: the id and maybe more
            out.append("/" + "/".join(["repositories", "**", *parts[2:]]))
        elif parts[2] == "**":
            out.append("/" + "/".join(["repositories", "**", *parts[3:]]))
        else:
            out.append("/" + "/".join(["repositories", "*", *parts[3:]]))
    if parts[0].lower() == "orgs" and len(parts) >= 2 and parts[1] != "**":
        out.append("/" + "/".join(["organizations", "*", *parts[2:]]))
        if len(parts) >= 4 and parts[2].lower() == "teams" and parts[3] != "**":
            out.append("/" + "/".join(["teams", "*", *parts[4:]]))
            out.append("/" + "/".join(["organizations", "*", "team", "*", *parts[4:]]))
    return tuple(out)


def _api_path(path: str) -> str | None:
    """The API path GitHub routes on: cleaned, and without a trailing slash."""
    clean = clean_path(path)
    return None if clean is None else (clean.rstrip("/") or "/")


def is_graphql_path(path: str) -> bool:
    return (_api_path(path) or "").lower() == "/graphql"  # any case: GitHub's router may ignore it


def is_graphql(method: str, path: str) -> bool:
    return is_graphql_path(path) and method.upper() in ("GET", "POST")


def check_rest(deny: Iterable[GithubDeny], method: str, path: str) -> Refusal | None:
    clean = _api_path(path)
    if clean is None:
        return Refusal("github.deny", "a GitHub API path with dot segments is not allowed")
    for rule in deny:
        if rule.path is None:
            continue
        if rule.method is not None and rule.method != method.upper():
            continue
        if any(path_glob_matches(p, clean) for p in alias_patterns(rule.path)):
            return Refusal(rule.id, f"GitHub: {rule.reason}")
    return None


# -- branch writes (git section) ------------------------------------------------------

_API = "api"  # stands for an object id the API request does not show; never the zero id
_BODY_KINDS = {"contents": "contents API", "create_ref": "git/refs", "rename": "branch rename",
               "merge_upstream": "merge-upstream", "autofix": "autofix commit"}


@dataclass(frozen=True)
class _Endpoint:
    kind: str  # git_data | update_branch | one of _BODY_KINDS
    branch: str = ""  # the branch named in the path (rename)


def _repo_path(clean: str) -> tuple[list[str], list[str]]:
    """The cleaned path's segments, as written and lower-cased for matching keywords."""
    segments = [s for s in clean.split("/") if s]
    return segments, [s.lower() for s in segments]


def _endpoint(method: str, rest: list[str], rest_lower: list[str]) -> _Endpoint | None:
    """Which git-writing endpoint a write under /repos/{owner}/{repo}/ is, if any."""
    if rest_lower[:1] == ["git"]:
        return _Endpoint("create_ref" if rest_lower == ["git", "refs"] and method == "POST" else "git_data")
    if rest_lower[:1] == ["contents"]:
        return _Endpoint("contents")
    if len(rest) >= 3 and rest_lower[0] == "branches" and rest_lower[-1] == "rename":
        return _Endpoint("rename", "/".join(rest[1:-1]))
    if rest_lower == ["merge-upstream"]:
        return _Endpoint("merge_upstream")
    if len(rest) == 3 and rest_lower[0] == "pulls" and rest_lower[2] == "update-branch":
        return _Endpoint("update_branch")
    if len(rest) == 5 and rest_lower[:2] == ["code-scanning", "alerts"] and rest_lower[3:] == ["autofix", "commits"]:
        return _Endpoint("autofix")
    return None


def _repo_endpoint(method: str, path: str) -> tuple[str, _Endpoint | None] | None:
    """(owner/repo, endpoint) of a write under /repos/{owner}/{repo}; None for other paths."""
    clean = _api_path(path)
    if clean is None or method.upper() in READS:
        return None
    segments, lower = _repo_path(clean)
    if len(segments) < 3 or lower[0] != "repos":
        return None
    return f"{lower[1]}/{lower[2]}", _endpoint(method.upper(), segments[3:], lower[3:])


def needs_body(host: str, method: str, path: str) -> bool:
    """Whether deciding this request needs its body: the branch a REST write names."""
    if host != HOST:
        return False
    found = _repo_endpoint(method, path)
    return found is not None and found[1] is not None and found[1].kind in _BODY_KINDS


def check_git(policy: GitPolicy, method: str, path: str, body: bytes | None) -> Refusal | None:
    """The git section applied to a REST write (body None: what the headers show)."""
    clean = _api_path(path)
    if clean is None or method.upper() in READS:
        return None
    segments, lower = _repo_path(clean)
    if lower[:1] == ["repositories"]:
        return Refusal("github.repository_unknown", "GitHub: /repositories/{id} names a repository by id, which "
                       "bottle cannot match to git.repositories (use /repos/{owner}/{repo})")
    found = _repo_endpoint(method, path)
    if found is None:
        return None
    repo, endpoint = found
    raw_segments = [s for s in path.split("?", 1)[0].split("/") if s]
    if any("/" in unquote(s) or "\\" in unquote(s) for s in raw_segments[:3]):
        return Refusal("github.body", "GitHub: an owner or repository name with an encoded slash is not allowed")
    refusal = repository_write(policy, repo, git_data=endpoint is not None)
    if refusal is not None or endpoint is None:
        return refusal
    if endpoint.kind == "update_branch":
        return Refusal("github.branch_unknown", "GitHub: updating a pull request's branch writes a branch bottle "
                       "cannot name (the pull request's head)")
    if endpoint.kind not in _BODY_KINDS:
        return None
    how = _BODY_KINDS[endpoint.kind]
    if "?" in path and path.split("?", 1)[1]:
        return Refusal("github.body", f"GitHub: {how}: a query string is refused (bottle reads the branch from "
                       "the JSON body)")
    if body is None:
        return None  # decided when the body has arrived (needs_body)
    try:
        return _body_updates(policy, endpoint, how, load_json(body))
    except UnreadableBody as e:
        return Refusal("github.body", f"GitHub: {how}: a body that cannot be read is refused ({e})")


def _body_updates(policy: GitPolicy, endpoint: _Endpoint, how: str, data: Any) -> Refusal | None:
    if not isinstance(data, dict):
        raise UnreadableBody("not a JSON object")
    if endpoint.kind == "create_ref":
        ref = exact_key(data, "ref")
        if not isinstance(ref, str) or not ref.startswith("refs/") or not is_ref_name(ref):
            raise UnreadableBody("ref must be a full ref name such as refs/heads/x")
        return branch_rules(policy, [git.RefUpdate(git.ZERO_OID, _API, ref)], how)
    if endpoint.kind == "rename":
        old, new = branch_refs(endpoint.branch), branch_refs(exact_key(data, "new_name"))
        if old is None or new is None:
            raise UnreadableBody("a rename needs the branch and new_name")
        updates = [git.RefUpdate(_API, git.ZERO_OID, ref) for ref in old]
        return branch_rules(policy, updates + [git.RefUpdate(git.ZERO_OID, _API, ref) for ref in new], how)
    key = "target_ref" if endpoint.kind == "autofix" else "branch"
    name = exact_key(data, key)
    refs = branch_refs(name)
    if refs is None:
        return Refusal("github.branch_unknown", f"GitHub: {how}: without {key} the write goes to the default "
                       "branch, which bottle cannot know; name the branch")
    return branch_rules(policy, [git.RefUpdate(_API, _API, ref) for ref in refs], how, name)


def branch_refs(name: Any) -> list[str] | None:
    """Every ref a branch name given to the API could mean, the likeliest first; None when
    it names none (absent, empty or HEAD: the default branch). `refs/heads/x` is x (GitHub
    documents the prefix as optional) but could be a branch of that name; `heads/x` could be
    resolved like git's rev-parse. A write passes only if every meaning passes."""
    if name is None or name == "" or name == "HEAD":
        return None
    if not isinstance(name, str):
        raise UnreadableBody(f"a branch name must be a string, got {type(name).__name__}")
    if not is_ref_name(f"refs/heads/{name}"):
        raise UnreadableBody(f"{name!r} is not a valid branch name")
    if name.startswith("refs/"):
        return [name, f"refs/heads/{name}"]
    if name.startswith(("heads/", "tags/", "remotes/")):
        return [f"refs/heads/{name}", f"refs/{name}"]
    return [f"refs/heads/{name}"]


_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(?:/|$)|[/.]$")


def is_ref_name(ref: str) -> bool:
    """git check-ref-format's rules (https://git-scm.com/docs/git-check-ref-format): a name
    git would refuse is no branch, and GitHub might normalize it into one (`main/`)."""
    return _BAD_REF.search(ref) is None and ref != "@"


def branch_rules(policy: GitPolicy, updates: list[git.RefUpdate], how: str, name: str | None = None) -> Refusal | None:
    """git push's rules for each ref the API write moves (git.check_update, reused as is);
    `name` is the branch name the request gave, when the updates are its meanings."""
    for i, update in enumerate(updates):
        if (refused := git.check_update(policy, update)) is not None:
            rule_id, reason = refused
            also = f"; {name!r} could also mean {update.ref}" if name is not None and i > 0 else ""
            return Refusal(rule_id, f"GitHub: {reason.removeprefix('bottle: ')} ({how}{also})")
    return None


def repository_write(policy: GitPolicy, repo: str, *, git_data: bool) -> Refusal | None:
    """A write to github.com/{repo} through the API: listed, and with push access for git data."""
    repo = repo.lower()
    entry = next((r for r in policy.repositories if r.host == GIT_HOST and r.path == repo), None)
    if entry is None:
        return Refusal("git.repositories", f"GitHub: repository {GIT_HOST}/{repo} is not in git.repositories "
                       "(read-only through the API)")
    if git_data and entry.access != "push":
        return Refusal(entry.id, f"GitHub: {GIT_HOST}/{repo} is read-only (access: {entry.access})")
    return None


# -- JSON bodies ------------------------------------------------------------------------


class UnreadableBody(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers differ on a key given twice (first or last wins) or in another case; bottle
    # reads only bodies in which no two keys could be the same key to anyone.
    seen: set[str] = set()
    for key, _ in pairs:
        if key.lower() in seen:
            raise UnreadableBody(f"key {key!r} given twice")
        seen.add(key.lower())
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise UnreadableBody(f"{name} is not JSON")


def load_json(body: bytes | str) -> Any:
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        return json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UnreadableBody("not JSON") from None


def exact_key(data: dict[str, Any], key: str) -> Any:
    """data[key] (None if absent); a key that differs only in case cannot be read."""
    for k in data:
        if k.lower() == key and k != key:
            raise UnreadableBody(f"key {k!r} is not {key!r}")
    return data.get(key)


# -- GraphQL ------------------------------------------------------------------------------

# Mutations that write a branch bottle cannot check against the git section: the
# repository is a node id bottle cannot map, or GitHub picks the branch.
_NODE_ID_WRITES = {
    "createRef": "createRef names its repository by node id, which bottle cannot match to git.repositories "
                 "(use POST /repos/{owner}/{repo}/git/refs)",
    "createLinkedBranch": "createLinkedBranch names its repository by node id, which bottle cannot match to "
                          "git.repositories (use POST /repos/{owner}/{repo}/git/refs)",
}
_UNKNOWN_BRANCH_WRITES = {
    "updatePullRequestBranch": "updatePullRequestBranch writes a branch bottle cannot name (the pull request's head)",
    "revertPullRequest": "revertPullRequest creates a branch bottle cannot name",
}


def check_graphql(deny: Iterable[GithubDeny], git_policy: GitPolicy | None, method: str, path: str,
                  body: bytes | None) -> Refusal | None:
    """Refuse a listed mutation field, a branch write the git section refuses, or any
    GraphQL request that cannot be read. body None: only what the URL shows."""
    method = method.upper()
    if method not in ("GET", "HEAD", "OPTIONS", "POST"):
        return Refusal("github.graphql", f"GitHub: GraphQL over {method} is refused")
    query = path.split("?", 1)[1] if "?" in path else ""
    if method == "POST" and query:
        return Refusal("github.graphql", "GitHub: a GraphQL POST with a query string is refused")
    if method == "OPTIONS" or (method == "POST" and body is None):
        return None
    by_name = {rule.graphql: rule for rule in deny if rule.graphql is not None}
    try:
        requests = _graphql_requests(method, query, body)
        operations = [(op, variables) for document, variables in requests for op in graphql.parse(document)]
        for op, variables in operations:
            for f in op.fields:
                if (rule := by_name.get(f.name)) is not None:
                    return Refusal(rule.id, f"GitHub: {rule.reason} (GraphQL {f.name})")
                if git_policy is not None and (refusal := _graphql_git(git_policy, op, f, variables)) is not None:
                    return refusal
    except (GraphQLSyntaxError, UnreadableBody) as e:
        return Refusal("github.graphql", f"GitHub: a GraphQL request that cannot be read is refused ({e})")
    return None


def _graphql_requests(method: str, query: str, body: bytes | None) -> list[tuple[str, dict[str, Any]]]:
    """(document, variables) of each operation request: the URL's for GET, else the body's."""
    if method in ("GET", "HEAD"):
        if body:
            raise GraphQLSyntaxError("a GraphQL GET with a body")
        if ";" in query:
            raise GraphQLSyntaxError("';' in the query string")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in ("query", "variables", "operationName") or key in params:
                raise GraphQLSyntaxError(f"query string parameter {key!r} is unexpected or repeated")
            params[key] = value
        if "query" not in params:
            return []
        return [(params["query"], _variables(params.get("variables")))]
    data = load_json(body or b"")
    out = []
    for op in data if isinstance(data, list) else [data]:
        if not isinstance(op, dict) or not isinstance(exact_key(op, "query"), str):
            raise GraphQLSyntaxError("an operation without a query string")
        out.append((op["query"], _variables(exact_key(op, "variables"))))
    return out


def _variables(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = load_json(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GraphQLSyntaxError("variables must be a JSON object")
    return value


def _graphql_git(policy: GitPolicy, op: graphql.Operation, f: graphql.Field,
                 variables: dict[str, Any]) -> Refusal | None:
    if f.name in _NODE_ID_WRITES:
        return Refusal("github.repository_unknown", f"GitHub: {_NODE_ID_WRITES[f.name]}")
    if f.name in _UNKNOWN_BRANCH_WRITES:
        return Refusal("github.branch_unknown", f"GitHub: {_UNKNOWN_BRANCH_WRITES[f.name]}")
    if f.name != "createCommitOnBranch":
        return None
    how = "GraphQL createCommitOnBranch"
    inp = graphql.resolve(f.arguments.get("input"), op, variables)
    branch = inp.get("branch") if isinstance(inp, dict) else None
    if not isinstance(branch, dict):
        raise GraphQLSyntaxError("createCommitOnBranch without input.branch")
    if branch.get("id") is not None:
        return Refusal("github.repository_unknown", "GitHub: createCommitOnBranch names its branch by node id, which "
                       "bottle cannot match to git.repositories (give repositoryNameWithOwner and branchName)")
    repo, name = branch.get("repositoryNameWithOwner"), branch.get("branchName")
    if not isinstance(repo, str) or not isinstance(name, str):
        raise GraphQLSyntaxError("createCommitOnBranch needs repositoryNameWithOwner and branchName")
    if (refusal := repository_write(policy, repo, git_data=True)) is not None:
        return refusal
    refs = branch_refs(name)
    if refs is None:
        return Refusal("github.branch_unknown", f"GitHub: {how}: without branchName the write goes to the "
                       "default branch, which bottle cannot know; name the branch")
    return branch_rules(policy, [git.RefUpdate(_API, _API, ref) for ref in refs], how, name)


# -- the entry point ----------------------------------------------------------------------

# Rack (and other frameworks) let a POST stand for another method through a header or a
# form field `_method`; bottle judges the method the request line names, so neither passes.
METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def check_headers(method: str, headers: Iterable[tuple[str, str]]) -> Refusal | None:
    """Refuse what would make GitHub act on another method than the one bottle checks."""
    for name, value in headers:
        if name.lower() in METHOD_OVERRIDE_HEADERS:
            return Refusal("github.method_override", f"GitHub: the {name.lower()} header is refused (bottle checks "
                           "the request's own method)")
        if name.lower() == "content-type" and method.upper() == "POST" and \
                value.split(";", 1)[0].strip().lower() in _FORM_TYPES:
            return Refusal("github.method_override", "GitHub: a form-encoded POST is refused (a _method field "
                           "could stand for another method)")
    return None



def check(deny: tuple[GithubDeny, ...], git_policy: GitPolicy | None, method: str, path: str,
          body: bytes | None) -> Refusal | None:
    """All refusals for one api.github.com request; body None means headers-only."""
    rules = DEFAULT_DENY + deny
    query = path.split("?", 1)[1] if "?" in path else ""
    if any(key.lower() == "_method" for key, _ in parse_qsl(query, keep_blank_values=True)):
        return Refusal("github.method_override", "GitHub: a _method parameter is refused (bottle checks the "
                       "request's own method)")
    if (refusal := check_rest(rules, method, path)) is not None:
        return refusal
    if is_graphql_path(path):
        return check_graphql(rules, git_policy, method, path, body)
    if git_policy is not None:
        return check_git(git_policy, method, path, body)
    return None
