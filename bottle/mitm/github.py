"""GitHub API refusals (api.github.com): REST by method and path, GraphQL by mutation field.

Pure functions, no mitmproxy imports. The defaults below always apply; a manifest's
`github.deny` adds to them. GraphQL documents are read by a small tokenizer that finds
the top-level field names of every `mutation` operation; a mutation it cannot read
(fragment spread at top level, a syntax it does not know) is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

from bottle.mitm.policy import GitPolicy, GithubDeny, clean_path

HOST = "api.github.com"
_ANY = ("PUT", "POST", "DELETE", "PATCH")


@dataclass(frozen=True)
class Refusal:
    rule_id: str
    reason: str


def _d(name: str, reason: str, *, methods: tuple[str, ...] = (), path: str | None = None,
       graphql: tuple[str, ...] = ()) -> list[GithubDeny]:
    rule_id = f"github.deny.default.{name}"
    out = [GithubDeny(id=rule_id, method=m, path=path, graphql=None, reason=reason) for m in methods]
    out += [GithubDeny(id=rule_id, method=None, path=None, graphql=g, reason=reason) for g in graphql]
    return out


DEFAULT_DENY: tuple[GithubDeny, ...] = tuple(
    _d("merge_pull_request", "merging a pull request is not allowed", methods=("PUT",),
       path="/repos/*/*/pulls/*/merge", graphql=("mergePullRequest", "enablePullRequestAutoMerge"))
    + _d("merge_branch", "merging branches is not allowed", methods=("POST",), path="/repos/*/*/merges",
         graphql=("mergeBranch",))
    + _d("create_release", "creating a release is not allowed", methods=("POST",),
         path="/repos/*/*/releases", graphql=("createRelease",))
    # The API's way to force-push or delete a branch; git pushes are checked by git.py.
    + _d("update_ref", "updating or deleting a ref through the API is not allowed (use git push)",
         methods=("PATCH", "DELETE"), path="/repos/*/*/git/refs/**", graphql=("updateRef", "updateRefs", "deleteRef"))
    + _d("delete_repository", "deleting a repository is not allowed", methods=("DELETE",), path="/repos/*/*")
    + _d("branch_protection", "changing branch protection is not allowed", methods=_ANY,
         path="/repos/*/*/branches/**/protection")
    + _d("branch_protection", "changing branch protection is not allowed", methods=_ANY,
         path="/repos/*/*/branches/**/protection/**",
         graphql=("createBranchProtectionRule", "updateBranchProtectionRule", "deleteBranchProtectionRule"))
)


def path_glob_matches(pattern: str, path: str) -> bool:
    """`*` is one path segment, `**` one or more; case-insensitive."""
    regex = []
    for part in pattern.strip("/").split("/"):
        regex.append("[^/]+(?:/[^/]+)*" if part == "**" else
                     "".join("[^/]*" if c == "*" else re.escape(c) for c in part))
    return re.fullmatch("/" + "/".join(regex), path, re.IGNORECASE) is not None


def _api_path(path: str) -> str | None:
    """The API path GitHub routes on: cleaned, and without a trailing slash."""
    clean = clean_path(path)
    return None if clean is None else (clean.rstrip("/") or "/")


def is_graphql(method: str, path: str) -> bool:
    return _api_path(path) == "/graphql" and method.upper() in ("GET", "POST")


def check_rest(deny: Iterable[GithubDeny], method: str, path: str) -> Refusal | None:
    clean = _api_path(path)
    if clean is None:
        return Refusal("github.deny", "a GitHub API path with dot segments is not allowed")
    for rule in deny:
        if rule.path is None:
            continue
        if rule.method is not None and rule.method != method.upper():
            continue
        if path_glob_matches(rule.path, clean):
            return Refusal(rule.id, f"GitHub: {rule.reason}")
    return None


def check_graphql(deny: Iterable[GithubDeny], method: str, path: str, body: bytes) -> Refusal | None:
    """Refuse a listed mutation field, or any mutation that cannot be read."""
    try:
        documents = list(_documents(method, path, body))
        fields = [f for doc in documents for f in mutation_fields(doc)]
    except GraphQLSyntaxError as e:
        return Refusal("github.graphql", f"GitHub: a GraphQL request that cannot be read is refused ({e})")
    by_name = {rule.graphql: rule for rule in deny if rule.graphql is not None}
    for name in fields:
        if (rule := by_name.get(name)) is not None:
            return Refusal(rule.id, f"GitHub: {rule.reason} (GraphQL {name})")
    return None


def _documents(method: str, path: str, body: bytes) -> Iterator[str]:
    if method.upper() == "GET":
        yield from parse_qs(path.partition("?")[2]).get("query", [])
        return
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise GraphQLSyntaxError("the body is not JSON") from None
    operations = data if isinstance(data, list) else [data]
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("query"), str):
            raise GraphQLSyntaxError("an operation without a query string")
        yield op["query"]


# -- GraphQL -------------------------------------------------------------------------


class GraphQLSyntaxError(ValueError):
    pass


_TOKEN_RE = re.compile(
    r'(?P<ws>[\s,\ufeff]+|#[^\n\r]*)'
    r'|(?P<block>"""(?:\\"""|[^"]|"(?!""))*""")'
    r'|(?P<string>"(?:\\.|[^"\\\n\r])*")'
    r'|(?P<spread>\.\.\.)'
    r'|(?P<name>[_A-Za-z][_0-9A-Za-z]*)'
    r'|(?P<number>-?[0-9][0-9.eE+-]*)'
    r'|(?P<punct>[!$&()\:=@\[\]{|}])'
)


def tokens(text: str) -> list[str]:
    """Names, punctuators and `...`; strings and numbers become placeholders, comments vanish."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise GraphQLSyntaxError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        out.append({"block": '"', "string": '"', "number": "0"}.get(kind, m.group()))
    return out


class _Reader:
    def __init__(self, toks: list[str]) -> None:
        self.toks, self.i = toks, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> str:
        tok = self.peek()
        if tok is None:
            raise GraphQLSyntaxError("unexpected end of document")
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        if (got := self.next()) != tok:
            raise GraphQLSyntaxError(f"expected {tok!r}, found {got!r}")

    def name(self) -> str:
        tok = self.next()
        if not re.fullmatch(r"[_A-Za-z][_0-9A-Za-z]*", tok):
            raise GraphQLSyntaxError(f"expected a name, found {tok!r}")
        return tok

    def skip_balanced(self) -> None:
        """Skip one (...), {...} or [...] group starting at the current token."""
        pairs = {"(": ")", "{": "}", "[": "]"}
        stack = [pairs[self.next()]]
        while stack:
            tok = self.next()
            if tok in pairs:
                stack.append(pairs[tok])
            elif tok in (")", "}", "]"):
                if tok != stack.pop():
                    raise GraphQLSyntaxError(f"unbalanced {tok!r}")

    def directives(self) -> None:
        while self.peek() == "@":
            self.next()
            self.name()
            if self.peek() == "(":
                self.skip_balanced()


def mutation_fields(document: str) -> list[str]:
    """Top-level field names (aliases resolved) of every mutation operation in document."""
    r = _Reader(tokens(document))
    fields: list[str] = []
    if r.peek() is None:
        raise GraphQLSyntaxError("empty document")
    while r.peek() is not None:
        tok = r.peek()
        if tok == "{":
            r.skip_balanced()
            continue
        keyword = r.name()
        if keyword == "fragment":
            r.name()
            if r.name() != "on":
                raise GraphQLSyntaxError("expected 'on' in a fragment")
            r.name()
            r.directives()
            _require(r, "{")
            r.skip_balanced()
            continue
        if keyword not in ("query", "mutation", "subscription"):
            raise GraphQLSyntaxError(f"unknown definition {keyword!r}")
        if r.peek() not in ("(", "@", "{"):
            r.name()
        if r.peek() == "(":
            r.skip_balanced()
        r.directives()
        _require(r, "{")
        if keyword == "mutation":
            fields.extend(_top_level_fields(r))
        else:
            r.skip_balanced()
    return fields


def _require(r: _Reader, tok: str) -> None:
    if r.peek() != tok:
        raise GraphQLSyntaxError(f"expected {tok!r}, found {r.peek()!r}")


def _top_level_fields(r: _Reader) -> list[str]:
    r.expect("{")
    fields = []
    while r.peek() != "}":
        if r.peek() == "...":
            raise GraphQLSyntaxError("a fragment at the top level of a mutation")
        name = r.name()
        if r.peek() == ":":
            r.next()
            name = r.name()
        fields.append(name)
        if r.peek() == "(":
            r.skip_balanced()
        r.directives()
        if r.peek() == "{":
            r.skip_balanced()
    r.expect("}")
    if not fields:
        raise GraphQLSyntaxError("an empty mutation")
    return fields


def needs_body(host: str, method: str, path: str) -> bool:
    """Whether deciding this request needs its body (e.g. the branch a REST write names)."""
    return False


def check(deny: tuple[GithubDeny, ...], git: GitPolicy | None, method: str, path: str,
          body: bytes | None) -> Refusal | None:
    """All refusals for one api.github.com request; body None means headers-only."""
    rules = DEFAULT_DENY + deny
    if (refusal := check_rest(rules, method, path)) is not None:
        return refusal
    if body is not None and is_graphql(method, path):
        return check_graphql(rules, method, path, body)
    return None
