"""GitHub API refusals: REST by method and path (and GitHub's id aliases), GraphQL by
top-level mutation field, and the git section's branch rules on the API's branch writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from bottle.mitm import github
from bottle.mitm.graphql import GraphQLSyntaxError, mutation_fields
from bottle.mitm.policy import GithubDeny, GitPolicy, GitRepository

EXTRA = (
    GithubDeny(id="github.deny[0]", method="DELETE", path="/repos/*/*/issues/*/comments/*", graphql=None,
               reason="no deleting comments"),
    GithubDeny(id="github.deny[1]", method=None, path=None, graphql="deleteIssue", reason="no deleting issues"),
)

BOT = GitPolicy(
    repositories=(GitRepository(id="git.repositories[0]", host="github.com", path="acme/widgets", access="push"),
                  GitRepository(id="git.repositories[1]", host="github.com", path="acme/docs", access="read"),
                  GitRepository(id="git.repositories[2]", host="gitlab.example.com", path="acme/other",
                                access="push")),
    protected_branches=("main", "master"), push_branches=("sandbox/*",),
    allow_force_push=False, allow_branch_deletion=False,
)
RENAMES = GitPolicy(repositories=BOT.repositories, protected_branches=("main",), push_branches=None,
                    allow_force_push=False, allow_branch_deletion=True)


def refusal(method, path, body=None, *, deny=(), git=None):
    found = github.check(deny, git, method, path, body)
    return (found.rule_id, found.reason) if found else None


# -- the default REST refusals ----------------------------------------------------------

REASONS = {
    "merge_pull_request": "merging a pull request is not allowed",
    "merge_branch": "merging branches is not allowed",
    "create_release": "creating a release is not allowed",
    "update_release": "publishing or changing a release is not allowed",
    "update_ref": "updating or deleting a ref through the API is not allowed (use git push)",
    "delete_repository": "deleting a repository is not allowed",
    "branch_protection": "changing branch protection is not allowed",
    "rulesets": "changing rulesets is not allowed",
    "repository_settings": "changing repository settings or visibility is not allowed",
    "template_copy": "creating a repository from a template is not allowed",
    "organization_settings": "changing organization or enterprise settings is not allowed",
    "deploy_keys": "adding or removing deploy keys is not allowed",
    "user_credentials": "changing the account's keys or e-mail addresses is not allowed",
    "webhooks": "creating or changing webhooks is not allowed",
    "collaborators": "changing collaborators, members, teams or invitations is not allowed",
    "actions_secrets": "changing Actions, Dependabot or Codespaces secrets or variables is not allowed",
    "actions_runners": "registering or changing self-hosted runners is not allowed",
    "environments": "changing deployment environments is not allowed",
    "deployment_approval": "approving workflow runs or deployments is not allowed",
    "workflow_dispatch": "dispatching, enabling or disabling workflows is not allowed",
    "gists": "creating or changing gists is not allowed",
    "push_protection_bypass": "bypassing secret scanning push protection is not allowed",
}

REST_REFUSED = [
    ("PUT", "/repos/acme/widgets/pulls/7/merge", "merge_pull_request"),
    ("PUT", "/repos/Acme/Widgets/pulls/7/merge/", "merge_pull_request"),
    ("PUT", "/repos/acme/widgets/pulls/7%2Fmerge", "merge_pull_request"),
    ("PUT", "//repos/acme/widgets/pulls/7/merge?x=1", "merge_pull_request"),
    ("POST", "/repos/acme/widgets/merges", "merge_branch"),
    ("POST", "/repos/acme/widgets/releases", "create_release"),
    ("PATCH", "/repos/acme/widgets/releases/12", "update_release"),
    ("PATCH", "/repos/acme/widgets/git/refs/heads/feature/x", "update_ref"),
    ("DELETE", "/repos/acme/widgets/git/refs/heads/x", "update_ref"),
    ("POST", "/repos/acme/widgets/git/refs/heads/x", "update_ref"),
    ("PUT", "/repos/acme/widgets/git/refs/tags/v1", "update_ref"),
    ("DELETE", "/repos/acme/widgets", "delete_repository"),
    ("PUT", "/repos/acme/widgets/branches/main/protection", "branch_protection"),
    ("DELETE", "/repos/acme/widgets/branches/feature/x/protection", "branch_protection"),
    ("POST", "/repos/acme/widgets/branches/main/protection/required_signatures", "branch_protection"),
    ("PATCH", "/repos/acme/widgets/branches/feature%2Fx/protection/required_status_checks", "branch_protection"),
    ("POST", "/repos/acme/widgets/rulesets", "rulesets"),
    ("PUT", "/repos/acme/widgets/rulesets/4", "rulesets"),
    ("DELETE", "/orgs/acme/rulesets/4", "rulesets"),
    ("POST", "/repos/acme/widgets/tags/protection", "rulesets"),
    ("PATCH", "/repos/acme/widgets", "repository_settings"),
    ("POST", "/repos/acme/widgets/transfer", "repository_settings"),
    ("POST", "/repos/acme/widgets/pages", "repository_settings"),
    ("PUT", "/repos/acme/widgets/pages", "repository_settings"),
    ("PUT", "/repos/acme/widgets/actions/permissions", "repository_settings"),
    ("PUT", "/repos/acme/widgets/actions/permissions/workflow", "repository_settings"),
    ("PUT", "/repos/acme/widgets/actions/oidc/customization/sub", "repository_settings"),
    ("PATCH", "/repos/acme/widgets/properties/values", "repository_settings"),
    ("DELETE", "/repos/acme/widgets/vulnerability-alerts", "repository_settings"),
    ("DELETE", "/repos/acme/widgets/automated-security-fixes", "repository_settings"),
    ("DELETE", "/repos/acme/widgets/private-vulnerability-reporting", "repository_settings"),
    ("PATCH", "/repos/acme/widgets/code-scanning/default-setup", "repository_settings"),
    ("DELETE", "/repos/acme/widgets/immutable-releases", "repository_settings"),
    ("POST", "/repos/acme/template/generate", "template_copy"),
    ("PATCH", "/orgs/acme", "organization_settings"),
    ("DELETE", "/orgs/acme", "organization_settings"),
    ("PUT", "/orgs/acme/actions/permissions/repositories/5", "organization_settings"),
    ("PUT", "/orgs/acme/actions/oidc/customization/sub", "organization_settings"),
    ("PATCH", "/orgs/acme/properties/values", "organization_settings"),
    ("PUT", "/orgs/acme/settings/immutable-releases", "organization_settings"),
    ("POST", "/orgs/acme/code-security/configurations", "organization_settings"),
    ("PATCH", "/orgs/acme/dependabot/repository-access", "organization_settings"),
    ("PATCH", "/organizations/acme/dependabot/repository-access", "organization_settings"),
    ("PUT", "/enterprises/acme/teams/t/organizations/acme", "organization_settings"),
    ("POST", "/repos/acme/widgets/keys", "deploy_keys"),
    ("DELETE", "/repos/acme/widgets/keys/3", "deploy_keys"),
    ("POST", "/user/keys", "user_credentials"),
    ("DELETE", "/user/keys/3", "user_credentials"),
    ("POST", "/user/gpg_keys", "user_credentials"),
    ("POST", "/user/ssh_signing_keys", "user_credentials"),
    ("POST", "/user/emails", "user_credentials"),
    ("POST", "/repos/acme/widgets/hooks", "webhooks"),
    ("PATCH", "/repos/acme/widgets/hooks/1/config", "webhooks"),
    ("DELETE", "/repos/acme/widgets/hooks/1", "webhooks"),
    ("POST", "/orgs/acme/hooks", "webhooks"),
    ("PUT", "/repos/acme/widgets/collaborators/mallory", "collaborators"),
    ("DELETE", "/repos/acme/widgets/collaborators/bob", "collaborators"),
    ("PATCH", "/repos/acme/widgets/invitations/4", "collaborators"),
    ("PATCH", "/user/repository_invitations/4", "collaborators"),
    ("PATCH", "/user/memberships/orgs/acme", "collaborators"),
    ("PUT", "/user/installations/1/repositories/2", "collaborators"),
    ("PUT", "/orgs/acme/memberships/mallory", "collaborators"),
    ("DELETE", "/orgs/acme/members/bob", "collaborators"),
    ("POST", "/orgs/acme/invitations", "collaborators"),
    ("PUT", "/orgs/acme/outside_collaborators/mallory", "collaborators"),
    ("PUT", "/orgs/acme/organization-roles/users/mallory/8", "collaborators"),
    ("PUT", "/orgs/acme/security-managers/teams/t", "collaborators"),
    ("POST", "/orgs/acme/personal-access-token-requests/9", "collaborators"),
    ("POST", "/orgs/acme/personal-access-tokens", "collaborators"),
    ("POST", "/orgs/acme/teams", "collaborators"),
    ("PATCH", "/orgs/acme/teams/devs", "collaborators"),
    ("PUT", "/orgs/acme/teams/devs/memberships/mallory", "collaborators"),
    ("PUT", "/orgs/acme/teams/devs/repos/acme/widgets", "collaborators"),
    ("PUT", "/repos/acme/widgets/actions/secrets/TOKEN", "actions_secrets"),
    ("POST", "/repos/acme/widgets/actions/variables", "actions_secrets"),
    ("PATCH", "/repos/acme/widgets/actions/variables/V", "actions_secrets"),
    ("PUT", "/repos/acme/widgets/environments/prod/secrets/TOKEN", "actions_secrets"),
    ("POST", "/repos/acme/widgets/environments/prod/variables", "actions_secrets"),
    ("PUT", "/repos/acme/widgets/dependabot/secrets/TOKEN", "actions_secrets"),
    ("PUT", "/repos/acme/widgets/codespaces/secrets/TOKEN", "actions_secrets"),
    ("PUT", "/orgs/acme/actions/secrets/TOKEN", "actions_secrets"),
    ("PUT", "/orgs/acme/actions/secrets/TOKEN/repositories/5", "actions_secrets"),
    ("POST", "/orgs/acme/actions/variables", "actions_secrets"),
    ("PUT", "/orgs/acme/dependabot/secrets/TOKEN", "actions_secrets"),
    ("PUT", "/orgs/acme/codespaces/secrets/TOKEN/repositories", "actions_secrets"),
    ("POST", "/orgs/acme/private-registries", "actions_secrets"),
    ("PUT", "/user/codespaces/secrets/TOKEN", "actions_secrets"),
    ("POST", "/repos/acme/widgets/actions/runners/registration-token", "actions_runners"),
    ("POST", "/repos/acme/widgets/actions/runners/generate-jitconfig", "actions_runners"),
    ("POST", "/orgs/acme/actions/runners/registration-token", "actions_runners"),
    ("PUT", "/orgs/acme/actions/runner-groups/1/repositories/5", "actions_runners"),
    ("POST", "/orgs/acme/actions/hosted-runners", "actions_runners"),
    ("PUT", "/repos/acme/widgets/environments/prod", "environments"),
    ("DELETE", "/repos/acme/widgets/environments/prod", "environments"),
    ("POST", "/repos/acme/widgets/environments/prod/deployment-branch-policies", "environments"),
    ("POST", "/repos/acme/widgets/environments/prod/deployment_protection_rules", "environments"),
    ("POST", "/repos/acme/widgets/actions/runs/9/approve", "deployment_approval"),
    ("POST", "/repos/acme/widgets/actions/runs/9/pending_deployments", "deployment_approval"),
    ("POST", "/repos/acme/widgets/actions/runs/9/deployment_protection_rule", "deployment_approval"),
    ("POST", "/repos/acme/widgets/actions/workflows/ci.yml/dispatches", "workflow_dispatch"),
    ("POST", "/repos/acme/widgets/dispatches", "workflow_dispatch"),
    ("PUT", "/repos/acme/widgets/actions/workflows/7/enable", "workflow_dispatch"),
    ("PUT", "/repos/acme/widgets/actions/workflows/7/disable", "workflow_dispatch"),
    ("POST", "/gists", "gists"),
    ("PATCH", "/gists/aa11", "gists"),
    ("DELETE", "/gists/aa11", "gists"),
    ("POST", "/gists/aa11/forks", "gists"),
    ("POST", "/gists/aa11/comments", "gists"),
    ("POST", "/repos/acme/widgets/secret-scanning/push-protection-bypasses", "push_protection_bypass"),
    # GitHub's id aliases of the same endpoints.
    ("PUT", "/repositories/1296269/pulls/7/merge", "merge_pull_request"),
    ("DELETE", "/repositories/1296269", "delete_repository"),
    ("PATCH", "/repositories/1296269", "repository_settings"),
    ("PUT", "/repositories/1296269/environments/prod/secrets/TOKEN", "actions_secrets"),
    ("POST", "/repositories/1296269/hooks", "webhooks"),
    ("PUT", "/repositories/1296269/collaborators/mallory", "collaborators"),
    ("PATCH", "/repositories/1296269/git/refs/heads/main", "update_ref"),
    ("PUT", "/repositories/1296269/branches/main/protection", "branch_protection"),
    ("PATCH", "/organizations/42", "organization_settings"),
    ("PUT", "/organizations/42/actions/secrets/TOKEN", "actions_secrets"),
    ("PUT", "/teams/7/repos/acme/widgets", "collaborators"),
    ("PUT", "/teams/7/memberships/mallory", "collaborators"),
    ("PUT", "/organizations/42/team/7/memberships/mallory", "collaborators"),
]


@pytest.mark.parametrize(("method", "path", "name"), REST_REFUSED)
def test_default_rest_refusals(method, path, name):
    assert refusal(method, path) == (f"github.deny.default.{name}", f"GitHub: {REASONS[name]}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/repos/acme/widgets/pulls/7/merge"),
        ("GET", "/repos/acme/widgets/releases"),
        ("GET", "/repos/acme/widgets/branches/main/protection"),
        ("GET", "/repos/acme/widgets/actions/secrets"),
        ("GET", "/repos/acme/widgets/hooks"),
        ("GET", "/repositories/1296269"),
        ("GET", "/gists"),
        ("GET", "/user/keys"),
        ("POST", "/repos/acme/widgets/pulls"),
        ("POST", "/repos/acme/widgets/issues/3/comments"),
        ("POST", "/repos/acme/widgets/pulls/3/reviews"),
        ("POST", "/repos/acme/widgets/git/refs"),
        ("POST", "/repos/acme/widgets/git/blobs"),
        ("PUT", "/repos/acme/widgets/contents/README.md"),
        ("POST", "/repos/acme/widgets/actions/runs/9/rerun"),
        ("POST", "/repos/acme/widgets/forks"),
        ("POST", "/orgs/acme/teams/devs/discussions"),
        ("PUT", "/repositories/1296269/contents/README.md"),
    ],
)
def test_reads_and_ordinary_writes_pass_without_a_git_section(method, path):
    assert refusal(method, path) is None


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("DELETE", "/repos/acme/widgets/issues/3/comments/9", ("github.deny[0]", "GitHub: no deleting comments")),
        ("DELETE", "/repositories/5/issues/3/comments/9", ("github.deny[0]", "GitHub: no deleting comments")),
        ("GET", "/repos/acme/widgets/../widgets/pulls",
         ("github.deny", "a GitHub API path with dot segments is not allowed")),
    ],
)
def test_manifest_rules_and_their_aliases(method, path, expected):
    assert refusal(method, path, deny=EXTRA) == expected


@pytest.mark.parametrize(
    ("pattern", "aliases"),
    [
        ("/repos/*/*", ("/repos/*/*", "/repositories/*")),
        ("/repos/acme/*/pulls/*/merge", ("/repos/acme/*/pulls/*/merge", "/repositories/*/pulls/*/merge")),
        ("/repos/**/merge", ("/repos/**/merge", "/repositories/**/merge")),
        ("/repos/acme/**", ("/repos/acme/**", "/repositories/**")),
        ("/orgs/*/teams/*/repos/**", ("/orgs/*/teams/*/repos/**", "/organizations/*/teams/*/repos/**",
                                      "/teams/*/repos/**", "/organizations/*/team/*/repos/**")),
        ("/gists/**", ("/gists/**",)),
    ],
)
def test_alias_patterns(pattern, aliases):
    assert github.alias_patterns(pattern) == aliases


# -- the default GraphQL refusals --------------------------------------------------------

MUTATIONS = {
    "merge_pull_request": ["mergePullRequest", "enablePullRequestAutoMerge", "enqueuePullRequest"],
    "merge_branch": ["mergeBranch"],
    "create_release": ["createRelease"],
    "update_ref": ["updateRef", "updateRefs", "deleteRef"],
    "branch_protection": ["createBranchProtectionRule", "updateBranchProtectionRule", "deleteBranchProtectionRule"],
    "rulesets": ["createRepositoryRuleset", "updateRepositoryRuleset", "deleteRepositoryRuleset"],
    "repository_settings": ["updateRepository", "archiveRepository", "unarchiveRepository",
                            "updateRepositoryWebCommitSignoffSetting"],
    "template_copy": ["cloneTemplateRepository"],
    "organization_settings": [
        "updateOrganizationAllowPrivateRepositoryForkingSetting", "updateOrganizationWebCommitSignoffSetting",
        "updateEnterpriseAllowPrivateRepositoryForkingSetting", "updateEnterpriseDefaultRepositoryPermissionSetting",
        "updateEnterpriseDeployKeySetting", "updateEnterpriseMembersCanChangeRepositoryVisibilitySetting",
        "updateEnterpriseMembersCanCreateRepositoriesSetting", "updateEnterpriseMembersCanDeleteRepositoriesSetting",
        "updateEnterpriseMembersCanInviteCollaboratorsSetting",
        "updateEnterpriseMembersCanUpdateProtectedBranchesSetting",
        "updateEnterpriseTwoFactorAuthenticationRequiredSetting",
        "updateEnterpriseTwoFactorAuthenticationDisallowedMethodsSetting", "createIpAllowListEntry",
        "updateIpAllowListEntry", "deleteIpAllowListEntry", "updateIpAllowListEnabledSetting",
        "updateIpAllowListForInstalledAppsEnabledSetting", "setEnterpriseIdentityProvider",
        "removeEnterpriseIdentityProvider", "regenerateEnterpriseIdentityProviderRecoveryCodes",
        "transferEnterpriseOrganization", "removeEnterpriseOrganization"],
    "collaborators": [
        "updateTeamsRepository", "removeOutsideCollaborator", "inviteEnterpriseAdmin", "inviteEnterpriseMember",
        "acceptEnterpriseAdministratorInvitation", "acceptEnterpriseMemberInvitation",
        "addEnterpriseOrganizationMember", "removeEnterpriseAdmin", "removeEnterpriseMember",
        "updateEnterpriseAdministratorRole", "updateEnterpriseOwnerOrganizationRole",
        "accessUserNamespaceRepository", "grantMigratorRole", "grantEnterpriseOrganizationsMigratorRole"],
    "environments": ["createEnvironment", "updateEnvironment", "deleteEnvironment"],
    "deployment_approval": ["approveDeployments"],
}


def gql(query: str, **extra) -> bytes:
    return json.dumps({"query": query, **extra}).encode()


@pytest.mark.parametrize(("name", "mutation"), [(n, m) for n, ms in MUTATIONS.items() for m in ms])
def test_default_graphql_refusals(name, mutation):
    body = gql(f"mutation {{ x: {mutation}(input: {{}}) {{ clientMutationId }} }}")
    assert refusal("POST", "/graphql", body) == (f"github.deny.default.{name}",
                                                  f"GitHub: {REASONS[name]} (GraphQL {mutation})")


def test_every_default_is_in_the_tables_above():
    listed = {(m, n) for n, ms in MUTATIONS.items() for m in ms}
    assert {(r.graphql, r.id.rsplit(".", 1)[1]) for r in github.DEFAULT_DENY if r.graphql} == listed
    names = {r.id.rsplit(".", 1)[1] for r in github.DEFAULT_DENY}
    assert names == set(REASONS) == {name for _, _, name in REST_REFUSED} | set(MUTATIONS)


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (gql('mutation { mergePullRequest(input: {pullRequestId: "x"}) { clientMutationId } }'),
         "github.deny.default.merge_pull_request"),
        (gql('mutation M($id: ID!) { a: mergePullRequest(input: {pullRequestId: $id}) { x } }', variables={"id": 1}),
         "github.deny.default.merge_pull_request"),
        (gql("mutation { addComment(input: {}) { x } mergeBranch(input: {}) { x } }"),
         "github.deny.default.merge_branch"),
        (gql("mutation { deleteIssue(input: {}) { x } }"), "github.deny[1]"),
        (json.dumps([{"query": "query { viewer { login } }"},
                     {"query": "mutation { mergePullRequest(input: {}) { x } }"}]).encode(),
         "github.deny.default.merge_pull_request"),
        (gql("query Q { viewer { login } } mutation W { mergeBranch(input: {}) { x } }", operationName="Q"),
         "github.deny.default.merge_branch"),
        (gql('mutation { addComment(input: {body: "mutation { mergePullRequest }"}) { x } }'), None),
        (gql('mutation { addComment(input: {body: """a "quoted" } block"""}) { x } } # mergePullRequest'), None),
        (gql("mutation {\n # mergePullRequest(input: {})\n addComment(input: {}) { x } }"), None),
        (gql('query { search(query: "mutation { mergePullRequest }") { x } }'), None),
        (gql("{ viewer { login } }"), None),
        (gql("query { viewer { ...F } } fragment F on User { login }"), None),
        (gql("mutation @dir(a: 1) { addStar(input: {}) @include(if: true) { x { y } } }"), None),
        (gql("mutation { createPullRequest(input: {repositoryId: \"R\", baseRefName: \"main\"}) { x } }"), None),
        (gql("mutation { ...F } fragment F on Mutation { mergePullRequest(input: {}) { x } }"), "github.graphql"),
        (gql("mutation { ... on Mutation { mergePullRequest(input: {}) { x } } }"), "github.graphql"),
        (gql("mutation { mergePullRequest(input: {) { x } }"), "github.graphql"),
        (gql("mutation { mergePullRequest"), "github.graphql"),
        (gql("mutation { }"), "github.graphql"),
        (gql("banana { x }"), "github.graphql"),
        (b"not json", "github.graphql"),
        (json.dumps({"variables": {}}).encode(), "github.graphql"),
        (json.dumps([{"query": "{ a }"}, "junk"]).encode(), "github.graphql"),
        (gql("{ a }", variables=[1]), "github.graphql"),
        (gql("{ a }", variables="{not json"), "github.graphql"),
    ],
)
def test_graphql_table(body, rule):
    found = github.check(EXTRA, None, "POST", "/graphql", body)
    assert (found.rule_id if found else None) == rule


TWO_QUERIES = (b'{"query": "mutation { m: mergePullRequest(input: {}) { x } }", '
               b'"query": "query { viewer { login } }"}')


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        # Python keeps the last of two keys, other parsers the first: neither is read.
        ("POST", "/graphql", TWO_QUERIES,
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'query' given twice)")),
        ("POST", "/graphql", b'{"query": "{ a }", "QUERY": "mutation { mergeBranch(input: {}) { x } }"}',
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'QUERY' given twice)")),
        ("POST", "/graphql", b'{"Query": "mutation { mergeBranch(input: {}) { x } }"}',
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'Query' is not 'query')")),
        ("POST", "/graphql", b'{"query": "{ a }", "variables": {"a": 1, "a": 2}}',
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'a' given twice)")),
        ("GET", "/graphql?query=%7Ba%7D&query=mutation%7BmergeBranch(input:%7B%7D)%7Bx%7D%7D", None,
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (query string parameter "
                            "'query' is unexpected or repeated)")),
        ("GET", "/graphql?query=mutation%7BmergePullRequest(input:%7B%7D)%7Bx%7D%7D", None,
         ("github.deny.default.merge_pull_request",
          "GitHub: merging a pull request is not allowed (GraphQL mergePullRequest)")),
        ("HEAD", "/graphql?query=mutation%7BmergePullRequest(input:%7B%7D)%7Bx%7D%7D", None,
         ("github.deny.default.merge_pull_request",
          "GitHub: merging a pull request is not allowed (GraphQL mergePullRequest)")),
        ("GET", "/graphql?query=%7Ba%7D", b"{}",
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (a GraphQL GET with a body)")),
        ("GET", "/graphql?query=%7Ba%7D;query=x", None,
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (';' in the query string)")),
        ("POST", "/graphql?query=mutation%7BmergeBranch%7D", None,
         ("github.graphql", "GitHub: a GraphQL POST with a query string is refused")),
        ("PUT", "/graphql", None, ("github.graphql", "GitHub: GraphQL over PUT is refused")),
        ("POST", "/GraphQL/", b'{"query": "mutation { mergeBranch(input: {}) { x } }"}',
         ("github.deny.default.merge_branch", "GitHub: merging branches is not allowed (GraphQL mergeBranch)")),
        ("GET", "/graphql?query=%7Bviewer%7Blogin%7D%7D", None, None),
        ("POST", "/graphql", None, None),  # the headers alone: decided with the body
    ],
)
def test_graphql_requests_that_could_be_read_two_ways_are_refused(method, path, body, expected):
    assert refusal(method, path, body) == expected


def test_graphql_refusal_reason():
    assert refusal("POST", "/graphql", gql("mutation { m: mergePullRequest(input: {}) { x } }")) == (
        "github.deny.default.merge_pull_request", "GitHub: merging a pull request is not allowed (GraphQL mergePullRequest)")


# -- the git section on REST branch writes ------------------------------------------------

CONTENTS = "/repos/acme/widgets/contents/docs/a.md"


def j(**fields) -> bytes:
    return json.dumps({"message": "m", "content": "aGk=", **fields}).encode()


UNKNOWN_DEFAULT = ("github.branch_unknown", "GitHub: contents API: without branch the write goes to the default "
                   "branch, which bottle cannot know; name the branch")


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("PUT", CONTENTS, j(branch="sandbox/x"), None),
        ("DELETE", CONTENTS, j(branch="sandbox/x", sha="abc"), None),
        ("PUT", CONTENTS, j(branch="main"),
         ("git.protected_branches", "GitHub: main is a protected branch (contents API)")),
        ("DELETE", CONTENTS, j(branch="master", sha="abc"),
         ("git.protected_branches", "GitHub: master is a protected branch (contents API)")),
        ("PUT", CONTENTS, j(branch="feature"),
         ("git.push_branches", "GitHub: feature is not in git.push_branches (sandbox/*) (contents API)")),
        ("PUT", CONTENTS, j(), UNKNOWN_DEFAULT),
        ("PUT", CONTENTS, j(branch=None), UNKNOWN_DEFAULT),
        ("PUT", CONTENTS, j(branch=""), UNKNOWN_DEFAULT),
        ("PUT", CONTENTS, j(branch="HEAD"), UNKNOWN_DEFAULT),
        ("PUT", CONTENTS, j(branch="refs/heads/main"),
         ("git.protected_branches", "GitHub: main is a protected branch (contents API)")),
        # A name that could mean two refs passes only if both pass.
        ("PUT", CONTENTS, j(branch="refs/heads/sandbox/x"),
         ("git.push_branches", "GitHub: refs/heads/sandbox/x is not in git.push_branches (sandbox/*) (contents API; "
                               "'refs/heads/sandbox/x' could also mean refs/heads/refs/heads/sandbox/x)")),
        ("PUT", CONTENTS, j(branch="heads/main"),
         ("git.push_branches", "GitHub: heads/main is not in git.push_branches (sandbox/*) (contents API)")),
        ("PUT", "/REPOS/Acme/Widgets/CONTENTS/a.md", j(branch="main"),
         ("git.protected_branches", "GitHub: main is a protected branch (contents API)")),
        # Names git would refuse are no branch, but GitHub might normalize them into one.
        ("PUT", CONTENTS, j(branch="main/"),
         ("github.body", "GitHub: contents API: a body that cannot be read is refused ('main/' is not a valid "
                         "branch name)")),
        ("PUT", CONTENTS, j(branch=" main"),
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (' main' is not a valid "
                         "branch name)")),
        ("PUT", CONTENTS, j(branch="sandbox/../main"),
         ("github.body", "GitHub: contents API: a body that cannot be read is refused ('sandbox/../main' is not a "
                         "valid branch name)")),
        ("PUT", CONTENTS, j(branch=["main"]),
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (a branch name must be a "
                         "string, got list)")),
        ("PUT", CONTENTS, b'{"branch": "sandbox/x", "branch": "main"}',
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (key 'branch' given twice)")),
        ("PUT", CONTENTS, b'{"branch": "sandbox/x", "Branch": "main"}',
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (key 'Branch' given twice)")),
        ("PUT", CONTENTS, b'{"Branch": "sandbox/x"}',
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (key 'Branch' is not 'branch')")),
        ("PUT", CONTENTS, b"branch=sandbox/x",
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (not JSON)")),
        ("PUT", CONTENTS, b'["branch"]',
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (not a JSON object)")),
        ("PUT", CONTENTS, b'{"branch": NaN}',
         ("github.body", "GitHub: contents API: a body that cannot be read is refused (NaN is not JSON)")),
        ("PUT", CONTENTS + "?branch=main", None,
         ("github.body", "GitHub: contents API: a query string is refused (bottle reads the branch from the "
                         "JSON body)")),
        ("PUT", CONTENTS, None, None),  # the headers alone: decided with the body
        ("PUT", "/repos/acme/other/contents/a.md", None,
         ("git.repositories", "GitHub: repository github.com/acme/other is not in git.repositories (read-only "
                              "through the API)")),
        ("PUT", "/repos/acme/docs/contents/a.md", None,
         ("git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)")),
        ("PUT", "/repositories/1296269/contents/a.md", None,
         ("github.repository_unknown", "GitHub: /repositories/{id} names a repository by id, which bottle cannot "
                                       "match to git.repositories (use /repos/{owner}/{repo})")),
        ("PUT", "/repos/acme%2Fwidgets/x/contents/a.md", None,
         ("github.body", "GitHub: an owner or repository name with an encoded slash is not allowed")),
        # Creating refs.
        ("POST", "/repos/acme/widgets/git/refs", json.dumps({"ref": "refs/heads/sandbox/new", "sha": "a" * 40}).encode(),
         None),
        ("POST", "/repos/acme/widgets/git/refs/", json.dumps({"ref": "refs/heads/main", "sha": "a" * 40}).encode(),
         ("git.protected_branches", "GitHub: main is a protected branch (git/refs)")),
        ("POST", "/repos/acme/widgets/git/refs", json.dumps({"ref": "refs/tags/v1", "sha": "a" * 40}).encode(),
         ("git.push_branches", "GitHub: refs/tags/v1 is not in git.push_branches (sandbox/*) (git/refs)")),
        ("POST", "/repos/acme/widgets/git/refs", json.dumps({"ref": "refs/heads/main.", "sha": "a" * 40}).encode(),
         ("github.body", "GitHub: git/refs: a body that cannot be read is refused (ref must be a full ref name such "
                         "as refs/heads/x)")),
        ("POST", "/repos/acme/widgets/git/refs", json.dumps({"ref": "sandbox/new", "sha": "a" * 40}).encode(),
         ("github.body", "GitHub: git/refs: a body that cannot be read is refused (ref must be a full ref name such as "
                         "refs/heads/x)")),
        ("POST", "/repos/acme/docs/git/refs", None,
         ("git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)")),
        # The objects that feed them.
        ("POST", "/repos/acme/widgets/git/blobs", None, None),
        ("POST", "/repos/acme/widgets/git/trees", None, None),
        ("POST", "/repos/acme/widgets/git/commits", None, None),
        ("POST", "/repos/acme/widgets/git/tags", None, None),
        ("POST", "/repos/acme/docs/git/blobs", None,
         ("git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)")),
        ("POST", "/repos/acme/docs/git/commits", None,
         ("git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)")),
        ("POST", "/repos/acme/other/git/trees", None,
         ("git.repositories", "GitHub: repository github.com/acme/other is not in git.repositories (read-only "
                              "through the API)")),
        # Other branch writes.
        ("POST", "/repos/acme/widgets/merge-upstream", b'{"branch": "main"}',
         ("git.protected_branches", "GitHub: main is a protected branch (merge-upstream)")),
        ("POST", "/repos/acme/widgets/merge-upstream", b'{"branch": "sandbox/x"}', None),
        ("POST", "/repos/acme/widgets/branches/sandbox/x/rename", b'{"new_name": "sandbox/y"}',
         ("git.allow_branch_deletion", "GitHub: deleting sandbox/x is not allowed (branch rename)")),
        ("PUT", "/repos/acme/widgets/pulls/3/update-branch", None,
         ("github.branch_unknown", "GitHub: updating a pull request's branch writes a branch bottle cannot name "
                                   "(the pull request's head)")),
        ("POST", "/repos/acme/widgets/code-scanning/alerts/4/autofix/commits", b'{"target_ref": "refs/heads/main"}',
         ("git.protected_branches", "GitHub: main is a protected branch (autofix commit)")),
        ("POST", "/repos/acme/widgets/code-scanning/alerts/4/autofix/commits", b"{}",
         ("github.branch_unknown", "GitHub: autofix commit: without target_ref the write goes to the "
                                   "default branch, which bottle cannot know; name the branch")),
        # Every other write: listed repositories only.
        ("POST", "/repos/acme/widgets/issues", None, None),
        ("POST", "/repos/acme/docs/issues/3/comments", None, None),
        ("POST", "/repos/acme/other/issues", None,
         ("git.repositories", "GitHub: repository github.com/acme/other is not in git.repositories (read-only "
                              "through the API)")),
        ("POST", "/repositories/1296269/issues", None,
         ("github.repository_unknown", "GitHub: /repositories/{id} names a repository by id, which bottle cannot "
                                       "match to git.repositories (use /repos/{owner}/{repo})")),
        ("GET", "/repos/acme/other/contents/a.md", None, None),
        ("GET", "/repositories/1296269/contents/a.md", None, None),
        ("POST", "/user/repos", None, None),
        # Defaults first.
        ("PUT", "/repos/acme/other/pulls/1/merge", None,
         ("github.deny.default.merge_pull_request", "GitHub: merging a pull request is not allowed")),
    ],
)
def test_git_section_on_rest_writes(method, path, body, expected):
    assert refusal(method, path, body, git=BOT) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"new_name": "sandbox/y"}', None),
        (b'{"new_name": "main"}', ("git.protected_branches", "GitHub: main is a protected branch (branch rename)")),
        (b"{}", ("github.body", "GitHub: branch rename: a body that cannot be read is refused (a rename needs "
                                "the branch and new_name)")),
    ],
)
def test_branch_rename_is_a_deletion_and_a_creation(body, expected):
    assert refusal("POST", "/repos/acme/widgets/branches/feature%2Fx/rename", body, git=RENAMES) == expected
    assert refusal("POST", "/repos/acme/widgets/branches/main/rename", b'{"new_name": "x"}', git=RENAMES) == (
        "git.protected_branches", "GitHub: main is a protected branch (branch rename)")


def test_without_a_git_section_branch_writes_are_ungoverned_like_git_pushes():
    assert refusal("PUT", CONTENTS, j(branch="main")) is None
    assert refusal("PUT", CONTENTS, j()) is None
    assert refusal("POST", "/graphql", gql("mutation { createRef(input: {}) { x } }")) is None


@pytest.mark.parametrize(
    ("ref", "valid"),
    [("refs/heads/main", True), ("refs/heads/feat/x.y", True), ("refs/heads/ü", True), ("refs/heads/main/", False),
     ("refs/heads/a..b", False), ("refs/heads/a.lock", False), ("refs/heads/a.lock/b", False), ("refs/heads/.x", False),
     ("refs/heads/a/.x", False), ("refs/heads/a@{1}", False), ("refs/heads/a//b", False), ("refs/heads/x.", False),
     ("refs/heads/a\\b", False), ("refs/heads/a~1", False), ("refs/heads/a^", False), ("refs/heads/a:b", False),
     ("refs/heads/a?", False), ("refs/heads/a*", False), ("refs/heads/a[b", False), ("refs/heads/a\tb", False),
     ("refs/heads/a\x7fb", False), ("@", False)],
)
def test_ref_names_follow_git_check_ref_format(ref, valid):
    assert github.is_ref_name(ref) is valid


@pytest.mark.parametrize(
    ("host", "method", "path", "needed"),
    [
        ("api.github.com", "PUT", CONTENTS, True),
        ("api.github.com", "DELETE", CONTENTS, True),
        ("api.github.com", "POST", "/repos/acme/widgets/git/refs", True),
        ("api.github.com", "POST", "/repos/acme/widgets/branches/a/rename", True),
        ("api.github.com", "POST", "/repos/acme/widgets/merge-upstream", True),
        ("api.github.com", "POST", "/repos/acme/widgets/code-scanning/alerts/4/autofix/commits", True),
        ("api.github.com", "GET", CONTENTS, False),
        ("api.github.com", "POST", "/repos/acme/widgets/git/blobs", False),
        ("api.github.com", "POST", "/repos/acme/widgets/issues", False),
        ("api.github.com", "PUT", "/repositories/1/contents/a", False),
        ("uploads.github.com", "PUT", CONTENTS, False),
    ],
)
def test_needs_body(host, method, path, needed):
    assert github.needs_body(host, method, path) is needed


# -- the git section on GraphQL branch writes ---------------------------------------------

COMMIT = """mutation ($input: CreateCommitOnBranchInput!) {
  createCommitOnBranch(input: $input) { commit { url } }
}"""


def commit_input(branch):
    return {"input": {"branch": branch, "message": {"headline": "h"}, "expectedHeadOid": "a" * 40,
                      "fileChanges": {"additions": [{"path": "a.md", "contents": "aGk="}]}}}


def named(repo="acme/widgets", name="sandbox/x"):
    return {"repositoryNameWithOwner": repo, "branchName": name}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (gql(COMMIT, variables=commit_input(named())), None),
        (gql(COMMIT, variables=commit_input(named("Acme/Widgets"))), None),
        (gql(COMMIT, variables=commit_input(named(name="main"))),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        (gql(COMMIT, variables=commit_input(named(name="refs/heads/main"))),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        (gql(COMMIT, variables=json.dumps(commit_input(named(name="feature")))),
         ("git.push_branches", "GitHub: feature is not in git.push_branches (sandbox/*) (GraphQL createCommitOnBranch)")),
        (gql(COMMIT, variables=commit_input(named(name=""))),
         ("github.branch_unknown", "GitHub: GraphQL createCommitOnBranch: without branchName the write goes "
                                   "to the default branch, which bottle cannot know; name the branch")),
        (gql(COMMIT, variables=commit_input({"id": "MDM6UmVmMTpyZWZzL2hlYWRzL21haW4="})),
         ("github.repository_unknown", "GitHub: createCommitOnBranch names its branch by node id, which bottle "
                                       "cannot match to git.repositories (give repositoryNameWithOwner and "
                                       "branchName)")),
        (gql(COMMIT, variables=commit_input({**named(), "id": "MDM6UmVm"})),
         ("github.repository_unknown", "GitHub: createCommitOnBranch names its branch by node id, which bottle "
                                       "cannot match to git.repositories (give repositoryNameWithOwner and "
                                       "branchName)")),
        (gql(COMMIT, variables=commit_input(named(repo="acme/other"))),
         ("git.repositories", "GitHub: repository github.com/acme/other is not in git.repositories (read-only "
                              "through the API)")),
        (gql(COMMIT, variables=commit_input(named(repo="acme/docs"))),
         ("git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)")),
        # The branch written inline, through a variable's default, or escaped.
        (gql('mutation { c: createCommitOnBranch(input: {branch: {repositoryNameWithOwner: "acme/widgets", '
             'branchName: "ma\\u0069n"}, message: {headline: "h"}, expectedHeadOid: "x"}) { commit { url } } }'),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        (gql('mutation { createCommitOnBranch(input: {branch: {repositoryNameWithOwner: "acme/widgets", '
             'branchName: """\n    main\n  """}, expectedHeadOid: "x"}) { x } }'),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        (gql('mutation M($b: CommittableBranch = {repositoryNameWithOwner: "acme/widgets", branchName: "main"}) '
             '{ createCommitOnBranch(input: {branch: $b, expectedHeadOid: "x"}) { x } }'),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        (gql('mutation M($b: CommittableBranch = {repositoryNameWithOwner: "acme/widgets", branchName: "main"}) '
             '{ createCommitOnBranch(input: {branch: $b, expectedHeadOid: "x"}) { x } }',
             variables={"b": named()}), None),
        (gql('mutation M($n: String!) { createCommitOnBranch(input: {branch: {repositoryNameWithOwner: '
             '"acme/widgets", branchName: $n}, expectedHeadOid: "x"}) { x } }', variables={"n": "main"}),
         ("git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")),
        # Readable only one way, or not at all: refused.
        (gql(COMMIT), ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (variable $input "
                                         "has no value)")),
        (gql("mutation { createCommitOnBranch(input: $input) { x } }", variables=commit_input(named())),
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (variable $input is not "
                            "declared)")),
        (gql('mutation { createCommitOnBranch(input: {branch: {branchName: "sandbox/x"}}) { x } }'),
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (createCommitOnBranch needs "
                            "repositoryNameWithOwner and branchName)")),
        (gql("mutation { createCommitOnBranch(input: {branch: {repositoryNameWithOwner: \"acme/widgets\", "
             "branchName: main}}) { x } }"),
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (createCommitOnBranch needs "
                            "repositoryNameWithOwner and branchName)")),
        (gql('mutation { createCommitOnBranch(input: {branch: {repositoryNameWithOwner: "acme/widgets", '
             'branchName: "sandbox/x", branchName: "main"}}) { x } }'),
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (input field 'branchName' "
                            "given twice)")),
        (json.dumps({"query": COMMIT, "variables": {"input": {"branch": {"branchName": "sandbox/x",
                                                                          "BranchName": "main"}}}}).encode(),
         ("github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'BranchName' given "
                            "twice)")),
        # Branch writes bottle cannot check.
        (gql('mutation { createRef(input: {repositoryId: "R_1", name: "refs/heads/sandbox/x", oid: "a"}) { x } }'),
         ("github.repository_unknown", "GitHub: createRef names its repository by node id, which bottle cannot "
                                       "match to git.repositories (use POST /repos/{owner}/{repo}/git/refs)")),
        (gql('mutation { createLinkedBranch(input: {issueId: "I_1", oid: "a"}) { x } }'),
         ("github.repository_unknown", "GitHub: createLinkedBranch names its repository by node id, which bottle "
                                       "cannot match to git.repositories (use POST /repos/{owner}/{repo}/git/refs)")),
        (gql('mutation { updatePullRequestBranch(input: {pullRequestId: "P_1"}) { x } }'),
         ("github.branch_unknown", "GitHub: updatePullRequestBranch writes a branch bottle cannot name (the pull "
                                   "request's head)")),
        (gql('mutation { revertPullRequest(input: {pullRequestId: "P_1"}) { x } }'),
         ("github.branch_unknown", "GitHub: revertPullRequest creates a branch bottle cannot name")),
        (gql('mutation { addComment(input: {subjectId: "I_1", body: "hi"}) { x } }'), None),
    ],
)
def test_git_section_on_graphql_branch_writes(body, expected):
    assert refusal("POST", "/graphql", body, git=BOT) == expected


def test_a_branch_write_in_a_get_query_string_is_checked_too():
    path = "/graphql?query=" + quote(COMMIT) + "&variables=" + quote(json.dumps(commit_input(named(name="main"))))
    assert refusal("GET", path, git=BOT) == (
        "git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)")


# -- the reader -------------------------------------------------------------------------------


def test_mutation_fields_resolves_aliases_and_skips_nesting():
    assert mutation_fields("mutation { a: addStar(x: [1, 2]) { s { t } } b: removeStar { u } }") == [
        "addStar", "removeStar"]


@pytest.mark.parametrize("text", ["", "mutation", "mutation { a(", 'mutation { a(b: "unterminated) }', "mutation { a } }",
                                  'mutation { a(b: "\\q") }', 'mutation { a(b: "\\ud800") }',
                                  'mutation { a(b: "\\u{110000}") }', "mutation ($a: Int = $b) { a }",
                                  "mutation { a(x: 1, x: 2) }", "mutation ($a: Int, $a: Int) { a }"])
def test_unreadable_documents_raise(text):
    with pytest.raises(GraphQLSyntaxError):
        mutation_fields(text)


# -- the docs --------------------------------------------------------------------------------


def test_docs_list_every_default():
    docs = (Path(__file__).parents[3] / "docs" / "manifest.md").read_text()
    section = docs[docs.index("### Built-in GitHub refusals"):]
    section = section[:section.index("\n## ")]
    for name, reason, rest, mutations in github._DEFAULTS:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/manifest.md does not list {name}"
        assert reason in row, name
        for operation in rest:
            assert f"`{operation}`" in row, (name, operation)
        for mutation in mutations:
            assert re.search(rf"`{mutation}`", row), (name, mutation)


# -- another method than the request line's -----------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("POST", [("X-HTTP-Method-Override", "PUT")],
         ("github.method_override", "GitHub: the x-http-method-override header is refused (bottle checks the "
                                    "request's own method)")),
        ("GET", [("x-http-method", "DELETE")],
         ("github.method_override", "GitHub: the x-http-method header is refused (bottle checks the request's own "
                                    "method)")),
        ("POST", [("X-Method-Override", "PATCH")],
         ("github.method_override", "GitHub: the x-method-override header is refused (bottle checks the request's "
                                    "own method)")),
        ("POST", [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
         ("github.method_override", "GitHub: a form-encoded POST is refused (a _method field could stand for "
                                    "another method)")),
        ("POST", [("content-type", "multipart/form-data; boundary=x")],
         ("github.method_override", "GitHub: a form-encoded POST is refused (a _method field could stand for "
                                    "another method)")),
        ("POST", [("content-type", "application/json")], None),
        ("PUT", [("content-type", "application/x-www-form-urlencoded")], None),
    ],
)
def test_method_overrides_are_refused(method, headers, expected):
    found = github.check_headers(method, headers)
    assert ((found.rule_id, found.reason) if found else None) == expected


def test_a_method_parameter_is_refused():
    assert refusal("POST", "/repos/acme/widgets/pulls/1/merge?_method=PUT") == (
        "github.method_override", "GitHub: a _method parameter is refused (bottle checks the request's own method)")
