"""GitHub API refusals: REST by method and path, GraphQL by top-level mutation field."""

from __future__ import annotations

import json

import pytest

from bottle.mitm import github
from bottle.mitm.github import GraphQLSyntaxError, mutation_fields
from bottle.mitm.policy import GithubDeny

EXTRA = (
    GithubDeny(id="github.deny[0]", method="DELETE", path="/repos/*/*/issues/*/comments/*", graphql=None,
               reason="no deleting comments"),
    GithubDeny(id="github.deny[1]", method=None, path=None, graphql="deleteIssue", reason="no deleting issues"),
)


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("PUT", "/repos/acme/widgets/pulls/7/merge", "github.deny.default.merge_pull_request"),
        ("PUT", "/repos/Acme/Widgets/pulls/7/merge/", "github.deny.default.merge_pull_request"),
        ("PUT", "/repos/acme/widgets/pulls/7%2Fmerge", "github.deny.default.merge_pull_request"),
        ("PUT", "//repos/acme/widgets/pulls/7/merge?x=1", "github.deny.default.merge_pull_request"),
        ("GET", "/repos/acme/widgets/pulls/7/merge", None),
        ("POST", "/repos/acme/widgets/releases", "github.deny.default.create_release"),
        ("GET", "/repos/acme/widgets/releases", None),
        ("POST", "/repos/acme/widgets/merges", "github.deny.default.merge_branch"),
        ("DELETE", "/repos/acme/widgets", "github.deny.default.delete_repository"),
        ("DELETE", "/repos/acme/widgets/git/refs/heads/x", "github.deny.default.update_ref"),
        ("PATCH", "/repos/acme/widgets/git/refs/heads/feature/x", "github.deny.default.update_ref"),
        ("POST", "/repos/acme/widgets/git/refs", None),
        ("PUT", "/repos/acme/widgets/branches/main/protection", "github.deny.default.branch_protection"),
        ("DELETE", "/repos/acme/widgets/branches/feature/x/protection", "github.deny.default.branch_protection"),
        ("POST", "/repos/acme/widgets/branches/main/protection/required_signatures",
         "github.deny.default.branch_protection"),
        ("GET", "/repos/acme/widgets/branches/main/protection", None),
        ("GET", "/repos/acme/widgets/pulls", None),
        ("POST", "/repos/acme/widgets/pulls", None),
        ("DELETE", "/repos/acme/widgets/issues/3/comments/9", "github.deny[0]"),
        ("GET", "/repos/acme/widgets/../widgets/pulls", "github.deny"),
    ],
)
def test_rest_table(method, path, rule):
    refusal = github.check(EXTRA, None, method, path, None)
    assert (refusal.rule_id if refusal else None) == rule


def gql(query: str, **extra) -> bytes:
    return json.dumps({"query": query, **extra}).encode()


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (gql('mutation { mergePullRequest(input: {pullRequestId: "x"}) { clientMutationId } }'),
         "github.deny.default.merge_pull_request"),
        (gql('mutation M($id: ID!) { a: mergePullRequest(input: {pullRequestId: $id}) { x } }'),
         "github.deny.default.merge_pull_request"),
        (gql("mutation { enablePullRequestAutoMerge(input: {}) { x } }"), "github.deny.default.merge_pull_request"),
        (gql("mutation { addComment(input: {}) { x } createRelease(input: {}) { x } }"),
         "github.deny.default.create_release"),
        (gql("mutation { updateBranchProtectionRule(input: {}) { x } }"), "github.deny.default.branch_protection"),
        (gql("mutation { deleteIssue(input: {}) { x } }"), "github.deny[1]"),
        (gql("mutation { updateRef(input: {force: true}) { x } }"), "github.deny.default.update_ref"),
        (json.dumps([{"query": "query { viewer { login } }"},
                     {"query": "mutation { mergePullRequest(input: {}) { x } }"}]).encode(),
         "github.deny.default.merge_pull_request"),
        (gql("query Q { viewer { login } } mutation W { mergeBranch(input: {}) { x } }"),
         "github.deny.default.merge_branch"),
        (gql('mutation { addComment(input: {body: "mutation { mergePullRequest }"}) { x } }'), None),
        (gql('mutation { addComment(input: {body: """a "quoted" } block"""}) { x } } # mergePullRequest'), None),
        (gql("mutation {\n # mergePullRequest(input: {})\n addComment(input: {}) { x } }"), None),
        (gql('query { search(query: "mutation { mergePullRequest }") { x } }'), None),
        (gql("{ viewer { login } }"), None),
        (gql("query { viewer { ...F } } fragment F on User { login }"), None),
        (gql("mutation @dir(a: 1) { addStar(input: {}) @include(if: true) { x { y } } }"), None),
        (gql("mutation { ...F } fragment F on Mutation { mergePullRequest(input: {}) { x } }"), "github.graphql"),
        (gql("mutation { ... on Mutation { mergePullRequest(input: {}) { x } } }"), "github.graphql"),
        (gql("mutation { mergePullRequest(input: {) { x } }"), "github.graphql"),
        (gql("mutation { mergePullRequest"), "github.graphql"),
        (gql("mutation { }"), "github.graphql"),
        (gql("banana { x }"), "github.graphql"),
        (b"not json", "github.graphql"),
        (json.dumps({"variables": {}}).encode(), "github.graphql"),
        (json.dumps([{"query": "{ a }"}, "junk"]).encode(), "github.graphql"),
    ],
)
def test_graphql_table(body, rule):
    refusal = github.check(EXTRA, None, "POST", "/graphql", body)
    assert (refusal.rule_id if refusal else None) == rule


def test_graphql_mutation_in_a_get_query_string_is_checked():
    refusal = github.check((), None, "GET", "/graphql?query=mutation%7BmergePullRequest(input:%7B%7D)%7Bx%7D%7D", b"")
    assert refusal.rule_id == "github.deny.default.merge_pull_request"


def test_graphql_refusal_reason():
    refusal = github.check((), None, "POST", "/graphql", gql("mutation { m: mergePullRequest(input: {}) { x } }"))
    assert refusal.reason == "GitHub: merging a pull request is not allowed (GraphQL mergePullRequest)"


def test_mutation_fields_resolves_aliases_and_skips_nesting():
    assert mutation_fields("mutation { a: addStar(x: [1, 2]) { s { t } } b: removeStar { u } }") == [
        "addStar", "removeStar"]


@pytest.mark.parametrize("text", ["", "mutation", "mutation { a(", 'mutation { a(b: "unterminated) }', "mutation { a } }"])
def test_unreadable_documents_raise(text):
    with pytest.raises(GraphQLSyntaxError):
        mutation_fields(text)
