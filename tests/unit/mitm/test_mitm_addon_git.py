"""The addon's git and GitHub hooks: repository allowlist, push streaming, API refusals."""

from __future__ import annotations

import asyncio
import json

from mitmproxy import http

from bottle.mitm import git
from test_mitm_addon import make_addon, make_flow, run_request
from test_mitm_git import A, B, commands, commit, pack

GIT = {
    "repositories": [{"id": "git.repositories[0]", "host": "github.com", "path": "org/repo", "access": "push"},
                     {"id": "git.repositories[1]", "host": "github.com", "path": "org/docs", "access": "read"}],
    "protected_branches": ["main"], "push_branches": ["sandbox/*"],
    "allow_force_push": False, "allow_branch_deletion": False,
}
GITHUB = {"deny": [{"id": "github.deny[0]", "method": None, "path": None, "graphql": "deleteIssue",
                    "reason": "no deleting issues"}]}
RULES_WITH_API = [
    {"id": "egress.allow[0]", "host": "github.com", "methods": None, "paths": None,
     "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
    {"id": "egress.allow[1]", "host": "api.github.com", "methods": None, "paths": None,
     "ports": [443], "private_upstream": False, "scan_body": False, "max_label_entropy": 3.5, "tls": "intercept"},
]


def addon(**changes):
    return make_addon(git=GIT, github=GITHUB, allow=RULES_WITH_API, routes=[], **changes)


def push(addon_, body: bytes, path="/org/repo.git/git-receive-pack", chunk=50):
    f, _, sent = drive_push(addon_, body, path, chunk)
    return f, sent


def drive_push(addon_, body: bytes, path="/org/repo.git/git-receive-pack", chunk=50):
    """A push as mitmproxy drives it: the body's chunks (the event loop runs between them),
    the hook before its end, the end, upstream's answer. Returns the flow, what was sent
    upstream before the end, and all that was sent."""
    f = make_flow("POST", f"https://github.com{path}", headers=[("content-type", "application/x-git-receive-pack-request"),
                                                                ("content-length", str(len(body)))])

    async def go():
        await addon_.requestheaders(f)
        sent = before_end = b""
        if f.response is None:
            assert callable(f.request.stream)
            for i in range(0, len(body), chunk):
                sent += b"".join(f.request.stream(body[i:i + chunk]))
                await asyncio.sleep(0)
            before_end = sent
            await addon_.bottle_request_streamed(f)
            sent += b"".join(f.request.stream(b""))
            await addon_.request(f)
            f.response = http.Response.make(200, b"upstream", {"content-type": "application/x-git-receive-pack-result"})
            await addon_.responseheaders(f)
            if callable(f.response.stream):
                f.response.stream(b"upstream")
        await addon_.response(f)
        return before_end, sent

    return (f, *asyncio.run(go()))


def test_fast_forward_push_to_a_push_branch_reaches_upstream_whole():
    a, lines = addon()
    c1, o1 = commit((A,))
    body = commands(f"{A} {o1} refs/heads/sandbox/x") + pack((1, c1), (3, b"blob" * 100))
    f, sent = push(a, body)
    assert sent == body
    assert f.response.content == b"upstream"
    assert "content-length" not in f.request.headers and f.request.headers["transfer-encoding"] == "chunked"
    assert lines[-1]["decision"] == "allow" and lines[-1]["rule"] == "git.repositories[0]"
    assert lines[-1]["bytes_up"] == len(body)


def test_push_to_a_protected_branch_never_reaches_upstream_and_gets_a_report():
    a, lines = addon()
    f, sent = push(a, commands(f"{A} {B} refs/heads/main", f"{A} {B} refs/heads/sandbox/y") + pack())
    assert sent == b""
    assert f.response.status_code == 200
    assert f.response.headers["content-type"] == "application/x-git-receive-pack-result"
    assert f.response.content == git.receive_pack_report(
        [("refs/heads/main", "bottle: main is a protected branch"),
         ("refs/heads/sandbox/y", "bottle: push refused because another ref was refused")], side_band=True)
    assert (lines[-1]["decision"], lines[-1]["rule"], lines[-1]["reason"]) == (
        "block", "git.protected_branches", "bottle: main is a protected branch")


def test_unproven_push_is_refused_as_a_force_push():
    a, lines = addon()
    c1, o1 = commit((B,))
    f, sent = push(a, commands(f"{A} {o1} refs/heads/sandbox/x") + pack((1, c1)))
    assert sent == b""
    assert b"ng refs/heads/sandbox/x bottle: force push is not allowed" in f.response.content
    assert lines[-1]["rule"] == "git.allow_force_push"


def test_push_to_a_read_only_repository_is_refused_before_streaming():
    a, lines = addon()
    f, _ = push(a, commands(f"{A} {B} refs/heads/sandbox/x"), path="/org/docs.git/git-receive-pack")
    assert f.response.status_code == 403
    assert lines[-1]["reason"] == "github.com/org/docs is read-only (access: read)"


def test_clone_of_an_unlisted_repository_gets_a_git_error_packet():
    a, lines = addon()
    f = asyncio.run(run_request(a, make_flow("GET", "https://github.com/org/other.git/info/refs?service=git-upload-pack")))
    assert f.response.status_code == 200
    assert f.response.headers["content-type"] == "application/x-git-upload-pack-advertisement"
    reason = "repository github.com/org/other is not in git.repositories"
    assert f.response.content == git.pkt(f"ERR bottle: {reason}\n".encode())
    assert (lines[-1]["decision"], lines[-1]["rule"], lines[-1]["reason"]) == ("block", "git.repositories", reason)


def test_clone_of_a_listed_repository_passes_with_the_repository_rule():
    a, lines = addon()
    asyncio.run(run_request(a, make_flow("GET", "https://github.com/org/docs.git/info/refs?service=git-upload-pack")))
    assert (lines[-1]["decision"], lines[-1]["rule"]) == ("allow", "git.repositories[1]")


def test_git_policy_enforces_in_discover_mode():
    a, lines = addon(mode="discover")
    f = asyncio.run(run_request(a, make_flow("GET", "https://github.com/org/other/info/refs?service=git-upload-pack")))
    assert lines[-1]["decision"] == "block" and f.response.content.startswith(b"00")


def test_rest_merge_is_refused_with_a_github_style_message():
    a, lines = addon()
    f = asyncio.run(run_request(a, make_flow("PUT", "https://api.github.com/repos/o/r/pulls/1/merge")))
    assert f.response.status_code == 403
    assert json.loads(f.response.content) == {"message": "bottle: blocked: GitHub: merging a pull request is not allowed"}
    assert lines[-1]["rule"] == "github.deny.default.merge_pull_request"


def test_graphql_mutation_is_checked_even_when_the_host_is_not_body_scanned():
    a, lines = addon()
    body = json.dumps({"query": "mutation { x: deleteIssue(input: {}) { y } }"}).encode()
    f = asyncio.run(run_request(a, make_flow("POST", "https://api.github.com/graphql",
                                             headers=[("content-type", "application/json")], body=body)))
    assert f.response.status_code == 403
    assert (lines[-1]["rule"], lines[-1]["reason"]) == ("github.deny[0]", "GitHub: no deleting issues (GraphQL deleteIssue)")


def test_graphql_query_and_rest_reads_pass():
    a, lines = addon()
    body = json.dumps({"query": "query { viewer { login } }"}).encode()
    asyncio.run(run_request(a, make_flow("POST", "https://api.github.com/graphql",
                                         headers=[("content-type", "application/json")], body=body)))
    asyncio.run(run_request(a, make_flow("GET", "https://api.github.com/repos/o/r/pulls")))
    assert [line["decision"] for line in lines] == ["allow", "allow"]


def contents_put(branch: str | None) -> http.HTTPFlow:
    body = {"message": "m", "content": "aGk="} | ({"branch": branch} if branch is not None else {})
    return make_flow("PUT", "https://api.github.com/repos/org/repo/contents/a.md",
                     headers=[("content-type", "application/json")], body=json.dumps(body).encode())


def test_contents_write_to_a_push_branch_is_buffered_checked_and_sent_whole():
    a, lines = addon()
    f = asyncio.run(run_request(a, contents_put("sandbox/x")))
    assert not callable(f.request.stream)  # buffered and checked, although scan_body is false
    assert json.loads(f.request.content)["branch"] == "sandbox/x"
    assert f.response.content == b"upstream says hi"
    assert (lines[-1]["decision"], lines[-1]["rule"]) == ("allow", "egress.allow[1]")


def test_contents_write_to_a_protected_or_unnamed_branch_is_refused_with_a_github_style_message():
    a, lines = addon()
    f = asyncio.run(run_request(a, contents_put("main")))
    assert f.response.status_code == 403
    assert json.loads(f.response.content) == {
        "message": "bottle: blocked: GitHub: main is a protected branch (contents API)"}
    assert (lines[-1]["decision"], lines[-1]["rule"]) == ("block", "git.protected_branches")
    f = asyncio.run(run_request(a, contents_put(None)))
    assert json.loads(f.response.content)["message"] == (
        "bottle: blocked: GitHub: contents API: without branch the write goes to the default branch, which bottle "
        "cannot know; name the branch")
    assert lines[-1]["rule"] == "github.branch_unknown"


def test_api_writes_to_unlisted_repositories_are_refused_on_their_headers():
    a, lines = addon()
    f = asyncio.run(run_request(a, make_flow("POST", "https://api.github.com/repos/org/other/issues", body=b"{}")))
    assert f.response.status_code == 403
    assert (lines[-1]["rule"], lines[-1]["reason"]) == (
        "git.repositories", "GitHub: repository github.com/org/other is not in git.repositories (read-only through "
        "the API)")


def test_a_method_override_header_is_refused_before_anything_goes_upstream():
    a, lines = addon()
    f = asyncio.run(run_request(a, make_flow("POST", "https://api.github.com/repos/org/repo/pulls/1/merge",
                                             headers=[("x-http-method-override", "PUT")], body=b"{}")))
    assert f.response.status_code == 403
    assert (lines[-1]["rule"], lines[-1]["reason"]) == (
        "github.method_override", "GitHub: the x-http-method-override header is refused (bottle checks the request's "
        "own method)")
