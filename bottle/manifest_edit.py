"""Writing manifests: a suggestion as a manifest of its own, or merged into the user's.

bottle/manifest.py reads manifests (PyYAML's safe loader, strictly); this module only
writes them. Merging uses ruamel.yaml's round-trip mode, the ecosystem's library for
editing YAML without losing what a person wrote: comments, key order, quoting and flow
lists stay as they were, and only the suggested entries are added. Every text returned
here is read back through `parse_manifest` first, so what is printed or written is a
manifest `bottle validate` accepts.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from bottle.errors import ManifestError
from bottle.manifest import parse_manifest
from bottle.suggest import Repository, Route, Rule, Suggestion

MAPPING_INDENT = 2


def _yaml(mapping: int = MAPPING_INDENT, sequence: int = 4, offset: int = 2) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file writes them, so that the
    lines a merge does not touch come out byte for byte. ruamel.yaml dumps with one
    indentation; its own guess misses keys followed by a comment."""
    mapping = sequence = offset = None
    key_col: int | None = None
    for line in text.splitlines():
        code = line.split(" #", 1)[0].rstrip()
        stripped = code.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        col = len(code) - len(stripped)
        if stripped.startswith("- ") and key_col is not None and sequence is None:
            offset = col - key_col
            sequence = len(code) - len(stripped[2:].lstrip()) - key_col
        elif key_col is not None and col > key_col and mapping is None and not stripped.startswith("-"):
            mapping = col - key_col
        key_col = col if stripped.endswith(":") else None
        if mapping is not None and sequence is not None:
            break
    return mapping or MAPPING_INDENT, sequence or 4, offset if offset is not None else 2


def _flow(items: Iterable[Any]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _rule_node(rule: Rule) -> CommentedMap:
    node = CommentedMap(host=rule.host)
    if rule.tls == "passthrough":
        node["tls"] = "passthrough"
    else:
        if rule.methods:
            node["methods"] = _flow(rule.methods)
        if rule.paths is not None:
            node["paths"] = _flow(rule.paths)
    node["ports"] = _flow(rule.ports)
    if not rule.scan_body:
        node["scan_body"] = False
    return node


def _route_node(route: Route) -> CommentedMap:
    auth = CommentedMap(scheme=route.scheme or "bearer")
    if route.header:
        auth["header"] = route.header
    auth["token_ref"] = route.token_ref
    return CommentedMap(host=route.host, paths=_flow(route.paths), auth=auth)


def _repo_node(repo: Repository) -> CommentedMap:
    return CommentedMap(repo=repo.repo, access=repo.access)


def _as_comment(comment: str, node: CommentedMap) -> str:
    """A list item written out, for a comment the user can uncomment."""
    out = io.StringIO()
    _yaml().dump([node], out)
    return comment + "\n" + "\n".join(line[2:] if line.startswith("  ") else line
                                      for line in out.getvalue().rstrip("\n").splitlines())


def _doubtful(suggestion: Suggestion, already: str = "") -> str | None:
    """The entries left for the user to decide, as comments; those already listed in the
    text (a suggestion merged before) are not listed again."""
    parts = [_as_comment(r.comment(), _rule_node(r)) for r in suggestion.rules
             if not r.active and f"# - host: {r.host}\n" not in already]
    parts += [_as_comment(f"{r.comment()}; the log does not tell how it is sent: check the scheme", _route_node(r))
              for r in suggestion.routes if r.scheme is None and r.extends is None]
    if not parts:
        return None
    return "Listed for you to decide (uncomment what the agent needs):\n" + "\n".join(parts)


def header(suggestion: Suggestion) -> str:
    n = suggestion.requests
    return (f"Suggested by `bottle policy suggest` from {n} logged request{'s' if n != 1 else ''}: it allows\n"
            "what the agent did, no more. Review every entry before you enforce it.")


# -- a manifest of its own ---------------------------------------------------------------------


def render_manifest(suggestion: Suggestion) -> str:
    doc = CommentedMap(version=1, name=suggestion.name)
    notes = "".join(f"\nNot suggested: {note}" for note in suggestion.notes)
    doc.yaml_set_start_comment(header(suggestion) + notes)
    allow = CommentedSeq()
    _append(allow, [r for r in suggestion.rules if r.active], _rule_node, indent=4)
    egress = CommentedMap(mode="enforce", allow=allow if allow else _flow([]))
    active_hosts = {r.host for r in suggestion.rules if r.active}
    routes = [r for r in suggestion.routes if r.scheme is not None and r.host in active_hosts]
    if routes:
        egress["routes"] = CommentedSeq()
        _append(egress["routes"], routes, _route_node, indent=4)
    doc["egress"] = egress
    if suggestion.repositories:
        repos = CommentedSeq()
        _append(repos, suggestion.repositories, _repo_node, indent=4)
        doc["git"] = CommentedMap(repositories=repos)
    trailing = []
    if (doubt := _doubtful(suggestion)) is not None:
        trailing = _anchor_before_next(doc, egress, "allow", doubt, 4)
    out = io.StringIO()
    _yaml().dump(doc, out)
    return _checked(out.getvalue() + _trailing(trailing, 4), Path("<suggested>"))


def _trailing(lines: list[str], indent: int) -> str:
    return "".join(f"{' ' * indent}# {line}".rstrip() + "\n" for line in lines)


def _append(seq: CommentedSeq, items: Iterable[Any], make, *, indent: int, first: str | None = None) -> None:
    for item in items:
        seq.append(make(item))
        comment = item.comment()
        if first is not None:
            comment, first = f"{first}\n{comment}", None
        seq.yaml_set_comment_before_after_key(len(seq) - 1, before=comment, indent=indent)


def _checked(text: str, path: Path) -> str:
    try:
        parse_manifest(text, path)
    except ManifestError as e:  # a bug in this module, never the user's input
        raise ManifestError(f"the suggested manifest would not be valid, so it is not shown:\n{e.message}") from None
    return text


# -- merged into the user's manifest ---------------------------------------------------------------


def merge_suggestion(path: Path, suggestion: Suggestion) -> str:
    """The manifest at path with the suggestion added; everything already there stays."""
    text = path.read_text(encoding="utf-8")
    mapping, sequence, offset = guess_indent(text)
    yaml = _yaml(mapping, sequence, offset)
    data = yaml.load(text)
    item_indent = mapping + offset  # a list item under a key of a top-level section
    egress = _section(data, "egress")
    allow = _list(egress, "allow")
    active_rules = [r for r in suggestion.rules if r.active]
    trailing: list[str] = []
    doubt = _doubtful(suggestion, text)
    if active_rules:
        _append(allow, active_rules, _rule_node, indent=item_indent, first=header(suggestion))
    if doubt:
        doubt = doubt if active_rules else f"{header(suggestion)}\n{doubt}"
        trailing += _anchor_before_next(data, egress, "allow", doubt, item_indent)
    _merge_routes(egress, suggestion, {r.host for r in active_rules}, item_indent)
    _merge_repositories(data, suggestion, item_indent)
    out = io.StringIO()
    yaml.dump(data, out)
    return _checked(out.getvalue() + _trailing(trailing, item_indent), path)


def _section(parent: CommentedMap, key: str) -> CommentedMap:
    if parent.get(key) is None:
        parent[key] = CommentedMap()
    return parent[key]


def _list(parent: CommentedMap, key: str) -> CommentedSeq:
    if parent.get(key) is None:
        parent[key] = CommentedSeq()
    seq = parent[key]
    if not seq:
        seq.fa.set_block_style()
    return seq


def _anchor_before_next(data: CommentedMap, section: CommentedMap, key: str, comment: str, indent: int) -> list[str]:
    """Put a comment after section[key]: before the key that follows it, or at the end."""
    for parent, after in ((section, key), (data, next((k for k, v in data.items() if v is section), None))):
        keys = list(parent)
        if after in keys and keys.index(after) + 1 < len(keys):
            parent.yaml_set_comment_before_after_key(keys[keys.index(after) + 1], before=comment, indent=indent)
            return []
    return comment.splitlines()


def _merge_routes(egress: CommentedMap, suggestion: Suggestion, new_hosts: set[str], indent: int) -> None:
    routes = None
    for route in suggestion.routes:
        if route.extends is not None:
            _extend_route(egress["routes"][route.extends], route)
            continue
        if route.scheme is None:
            continue  # listed among the entries to decide
        routes = routes if routes is not None else _list(egress, "routes")
        _append(routes, [route], _route_node, indent=indent)


def _extend_route(node: CommentedMap, route: Route) -> None:
    """More paths (and methods, if the route names them) for a route the log shows too narrow."""
    for key, wanted, covered in (("paths", route.paths, lambda p, q: p.startswith(q)),
                                 ("methods", route.methods, lambda m, n: m == n)):
        have = node.get(key)
        if have is None:
            continue  # the route already covers every path (or method)
        added = [w for w in wanted if not any(covered(w, h) for h in have)]
        have.extend(added)
        if added and key not in node.ca.items:  # never replace the user's own comment
            node.yaml_add_eol_comment(f"suggested: + {', '.join(added)} ({route.comment()})", key)


def _merge_repositories(data: CommentedMap, suggestion: Suggestion, indent: int) -> None:
    new = [r for r in suggestion.repositories if r.upgrade is None]
    repos = _list(_section(data, "git"), "repositories") if suggestion.repositories else None
    for repo in suggestion.repositories:
        if repo.upgrade is not None:
            repos[repo.upgrade]["access"] = repo.access
            if repo.upgrade not in repos.ca.items:  # never replace the user's own comment
                repos.yaml_set_comment_before_after_key(repo.upgrade, before=f"suggested: access was read; "
                                                        f"{repo.comment()}", indent=indent)
    if new:
        _append(repos, new, _repo_node, indent=indent)
