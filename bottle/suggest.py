"""`bottle policy suggest`: a reviewable egress (and git) policy from what the agent did.

Pure: log entries (and optionally the manifest to extend) in, a `Suggestion` out;
bottle/manifest_edit.py writes it as YAML. Same entries, same suggestion: everything is
sorted, nothing depends on time or on the order logs are given in.

- Hosts are case-folded; each host's paths become prefixes: cut at the first segment that
  looks like an id, a hash or a version, at most PREFIX_DEPTH segments deep; a parent
  with COLLAPSE_AT or more distinct children becomes one prefix (at the root: any path).
  Prefixes used with the same methods share a rule.
- `scan_body: false` only where the scanner refused a body as binary (and it was not git
  traffic: git policy streams pushes by itself).
- Git smart-HTTP traffic becomes `git.repositories`, push access when a push was seen.
- A placeholder refused outside its route on that route's own host extends the route.
- Telemetry-looking hosts and paths, and hosts that are not first parties, are listed but
  commented out. First parties: hosts the manifest names, hosts that got a credential
  injected or served git, and hosts sharing their parent domain.
- Traffic refused for what no rule should allow is left out: the scanner's findings,
  IP-literal destinations, domain fronting, GitHub API refusals.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Mapping

from bottle.egresslog import Entry, requests
from bottle.manifest import Manifest
from bottle.mitm import decide, git
from bottle.mitm.policy import Policy, clean_path, host_matches, normalize_host
from bottle.replay import replay_policy

PREFIX_DEPTH = 2
COLLAPSE_AT = 5

_VARIABLE = re.compile(
    r"\d+"  # numeric ids
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUIDs
    r"|(?=[0-9a-f]*\d)[0-9a-f]{7,}"  # hashes, abbreviated or not
    r"|.*\d+\.\d+.*"  # versions and versioned files: 1.2.3, v2.0.1, pkg-1.2.3.tgz
    r"|(?=.*\d)(?=.*[a-z])[a-z0-9_-]{24,}",  # opaque tokens
    re.IGNORECASE,
)
_TELEMETRY_WORDS = frozenset({
    "telemetry", "analytics", "metrics", "stats", "tracking", "track", "beacon", "crash", "crashes", "otel",
    "opentelemetry", "insights", "rum", "events", "logs", "log", "collect", "collector", "ingest",
})
_TELEMETRY_VENDORS = ("statsig", "sentry", "segment", "datadog", "newrelic", "nr-data", "amplitude", "mixpanel",
                      "honeycomb", "bugsnag", "rollbar", "posthog", "launchdarkly", "crashlytics", "hotjar")
_TELEMETRY_PATHS = frozenset({"telemetry", "event_logging", "analytics", "metrics", "rgstr", "collect", "track",
                              "tracking", "beacon", "traces"})
_OUTSIDE_ROUTE = re.compile(r"credential placeholder for (?P<ref>\w+) sent outside its route (?P<route>\S+)")
# Refusals no rule should lift: the request carried a secret, named an address, fronted
# another host, or asked GitHub for something bottle never allows.
_NEVER = ("IP literal destination", "misdirected request", "client ")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A suggested `egress.allow` entry."""

    host: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    ports: tuple[int, ...]
    scan_body: bool = True
    tls: str = "intercept"
    count: int = 0
    example: str = ""
    doubt: str = ""  # why it is commented out; empty when it is suggested as is

    @property
    def active(self) -> bool:
        return not self.doubt

    def comment(self) -> str:
        text = f"{self.count} request{'s' if self.count != 1 else ''}, e.g. {self.example}"
        if self.paths is None and self.tls != "passthrough":
            text += " (any path: the traffic spans the host)"
        if not self.scan_body:
            text += "; bodies were refused as binary, so they are not scanned"
        return f"{self.doubt}: {text}" if self.doubt else text


@dataclasses.dataclass(frozen=True)
class Route:
    """A suggested credential route, or more paths for an existing one (`extends`)."""

    token_ref: str
    host: str
    paths: tuple[str, ...]
    scheme: str | None  # None when the log does not tell
    header: str | None
    count: int
    example: str
    extends: int | None = None  # index in the manifest's egress.routes
    methods: tuple[str, ...] = ()  # the methods seen, for a route that names its methods

    def comment(self) -> str:
        what = f"{self.count} request{'s' if self.count != 1 else ''} carried {self.token_ref}'s placeholder, " \
               f"e.g. {self.example}"
        if self.extends is not None:
            return f"{what}; refused outside this route until now"
        if self.scheme == "bearer":
            what += " (sent as Authorization: check the scheme: bearer, token or basic)"
        return what


@dataclasses.dataclass(frozen=True)
class Repository:
    repo: str  # host/owner/repo
    access: str
    count: int
    example: str
    upgrade: int | None = None  # index in the manifest's git.repositories whose access grows

    def comment(self) -> str:
        seen = "clone, fetch and push" if self.access == "push" else "clone and fetch"
        return f"{self.count} git request{'s' if self.count != 1 else ''} ({seen}), e.g. {self.example}"


@dataclasses.dataclass(frozen=True)
class Suggestion:
    name: str
    requests: int
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    repositories: tuple[Repository, ...]
    notes: tuple[str, ...]  # what was seen and deliberately not suggested


def suggest_policy(entries: Iterable[Entry], manifest: Manifest | None = None) -> Suggestion:
    policy = replay_policy(manifest) if manifest is not None else None
    lines = sorted(requests(entries), key=_order)
    notes: list[str] = []
    wanted = [e for e in lines if _wanted(e, notes)]
    repositories = _repositories(wanted, manifest)
    uncovered = [e for e in wanted if policy is None or not _covered(policy, e)]
    routes, route_notes = _routes(wanted, manifest)
    notes += route_notes
    first_parties = _first_parties(wanted, policy, repositories)
    rules = _rules(uncovered, first_parties)
    return Suggestion(
        name=_name(lines, manifest),
        requests=len(lines),
        rules=tuple(rules),
        routes=tuple(routes),
        repositories=tuple(repositories),
        notes=tuple(sorted(set(notes))),
    )


def _order(e: Entry) -> tuple:
    return (normalize_host(e["host"]), e["port"], e["path"], e["method"], e["decision"], e["reason"], e.get("time") or "")


def _wanted(e: Entry, notes: list[str]) -> bool:
    host = normalize_host(e["host"])
    if e.get("scanner"):
        notes.append(f"{host}: a request the scanner flagged ({', '.join(e['scanner'])})")
        return False
    if e["decision"] == "block" and (e["reason"].startswith(_NEVER) or (e["rule"] or "").startswith("github.")):
        return False
    return True


def _covered(policy: Policy, e: Entry) -> bool:
    if e["method"] == "CONNECT":
        return bool(decide.rules_for_host(policy, e["host"])) and (
            not e.is_passthrough or decide.passthrough_rule(policy, e["host"], e["port"]) is not None)
    return decide.find_rule(policy, e["host"], e["port"], e["method"], e["path"]) is not None


def _name(lines: list[Entry], manifest: Manifest | None) -> str:
    if manifest is not None:
        return manifest.data["name"]
    names = sorted({m.group(1) for e in lines
                    if (m := re.fullmatch(r"bottle-([a-z0-9-]+)-[a-z0-9]{1,16}", str(e.get("bottle") or "")))})
    return names[0] if names else "suggested"


# -- paths -----------------------------------------------------------------------------------


def generalize(path: str) -> str:
    """The prefix a path suggests: literal segments up to the first variable one, at most
    PREFIX_DEPTH deep; a whole literal path stays exact."""
    clean = clean_path(path) or "/"
    segments = [s for s in clean.split("/") if s]
    kept: list[str] = []
    for segment in segments:
        if _VARIABLE.fullmatch(segment) or len(kept) == PREFIX_DEPTH:
            break
        kept.append(segment)
    if not kept:
        return "/"
    prefix = "/" + "/".join(kept)
    return prefix + "/" if len(kept) < len(segments) or clean.endswith("/") else prefix


def collapse(prefixes: Iterable[str]) -> tuple[str, ...] | None:
    """Fewest prefixes covering these; None when they span the host (any path)."""
    current = set(prefixes)
    while True:
        children: dict[str, set[str]] = collections.defaultdict(set)
        for p in current:
            children[_parent(p)].add(p)
        crowded = sorted((parent for parent, kids in children.items() if len(kids) >= COLLAPSE_AT),
                         key=lambda p: -p.count("/"))
        if not crowded:
            break
        parent = crowded[0]
        current = (current - children[parent]) | {parent}
    if "/" in current:
        return None
    kept = sorted(p for p in current if not any(p != q and p.startswith(q) for q in current))
    return tuple(kept)


def _parent(prefix: str) -> str:
    trimmed = prefix.rstrip("/")
    return trimmed[: trimmed.rfind("/") + 1] or "/"


# -- which hosts are first parties -------------------------------------------------------------


def looks_like_telemetry(host: str) -> bool:
    words = set(re.split(r"[.-]", host))
    return bool(words & _TELEMETRY_WORDS) or any(v in host for v in _TELEMETRY_VENDORS)


def _telemetry_path(prefix: str) -> bool:
    return any(s.lower() in _TELEMETRY_PATHS for s in prefix.split("/"))


def _family(host: str) -> str:
    """The parent domain (`api.example.com` → `example.com`); a two-label host is its own."""
    labels = host.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else host


def _first_parties(lines: list[Entry], policy: Policy | None, repositories: list[Repository]) -> set[str]:
    known = {normalize_host(e["host"]) for e in lines if e.get("token_ref") and e["decision"] != "block"}
    known |= {r.repo.split("/", 1)[0] for r in repositories}
    if policy is not None:
        known |= {r.host.removeprefix("*.") for r in policy.allow} | {r.host.removeprefix("*.") for r in policy.routes}
        if policy.git:
            known |= {r.host for r in policy.git.repositories}
    return {_family(h) for h in known} | known


def _doubt(host: str, first_parties: set[str], prefixes: Iterable[str] = ()) -> str:
    if looks_like_telemetry(host) or any(_telemetry_path(p) for p in prefixes):
        return "telemetry?"
    if host not in first_parties and _family(host) not in first_parties:
        return "unknown third party"
    return ""


# -- rules ---------------------------------------------------------------------------------------


def _rules(lines: list[Entry], first_parties: set[str]) -> list[Rule]:
    by_host: dict[str, list[Entry]] = collections.defaultdict(list)
    for e in lines:
        by_host[normalize_host(e["host"])].append(e)
    rules = []
    for host in sorted(by_host):
        rules += _host_rules(host, by_host[host], first_parties)
    return sorted(rules, key=lambda r: (not r.active, r.host, r.methods or (), r.paths or ()))


def _host_rules(host: str, lines: list[Entry], first_parties: set[str]) -> list[Rule]:
    ports = tuple(sorted({e["port"] for e in lines}))
    tunnels = [e for e in lines if e["method"] == "CONNECT"]
    rules = []
    if tunnels:
        passthrough = all(e.is_passthrough for e in tunnels)
        doubt = _doubt(host, first_parties) or ("" if passthrough else "never decrypted")
        rules.append(Rule(host=host, methods=None, paths=None, ports=tuple(sorted({e["port"] for e in tunnels})),
                          tls="passthrough" if passthrough else "intercept", count=len(tunnels),
                          example=f"CONNECT {host}", doubt=doubt))
    http = [e for e in lines if e["method"] != "CONNECT"]
    if not http:
        return rules
    by_prefix: dict[str, list[Entry]] = collections.defaultdict(list)
    for e in http:
        by_prefix[generalize(e["path"])].append(e)
    telemetry = {p for p in by_prefix if _telemetry_path(p)}
    for group in (set(by_prefix) - telemetry, telemetry):
        if group:
            rules += _grouped_rules(host, ports, {p: by_prefix[p] for p in group}, first_parties)
    return rules


def _grouped_rules(host: str, ports: tuple[int, ...], by_prefix: Mapping[str, list[Entry]],
                   first_parties: set[str]) -> list[Rule]:
    """Prefixes used with the same methods share a rule."""
    paths = collapse(by_prefix)
    scopes: dict[str | None, list[Entry]] = collections.defaultdict(list)
    for prefix, es in by_prefix.items():
        scope = None if paths is None else next(p for p in paths if prefix.startswith(p))
        scopes[scope].extend(es)
    by_methods: dict[tuple[str, ...], list[tuple[str | None, list[Entry]]]] = collections.defaultdict(list)
    for scope, es in scopes.items():
        by_methods[tuple(sorted({e["method"] for e in es}))].append((scope, es))
    rules = []
    for methods, items in sorted(by_methods.items()):
        es = [e for _, group in items for e in group]
        scoped = None if any(scope is None for scope, _ in items) else tuple(sorted(scope for scope, _ in items))
        binary = _binary_bodies(es)
        rules.append(Rule(host=host, methods=methods, paths=scoped, ports=ports, scan_body=not binary, count=len(es),
                          example=_example(es), doubt=_doubt(host, first_parties, scoped or ())))
    return rules


def _binary_bodies(es: list[Entry]) -> bool:
    """Bodies the scanner refused as binary, and none it could read (git is left out: git
    policy streams packs by itself)."""
    refused = any(e["status"] == 415 and "binary" in e["reason"] and git.classify(e["path"]) is None for e in es)
    read = any(e.get("scan") == "full" and e["bytes_up"] > 0 and e["decision"] != "block" for e in es)
    return refused and not read


def _example(es: list[Entry]) -> str:
    counted = collections.Counter((e["method"], e["path"]) for e in es)
    (method, path), _ = min(counted.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{method} {path}"


# -- git and routes ------------------------------------------------------------------------------


def _repositories(lines: list[Entry], manifest: Manifest | None) -> list[Repository]:
    seen: dict[str, list[Entry]] = collections.defaultdict(list)
    pushes: set[str] = set()
    for e in lines:
        request = git.classify(e["path"])
        if request is None or e["method"] == "CONNECT":
            continue
        repo = f"{normalize_host(e['host'])}/{request.repo}"
        seen[repo].append(e)
        if request.service == "git-receive-pack":
            pushes.add(repo)
    existing = {r["repo"]: (i, r["access"]) for i, r in
                enumerate((manifest.data.get("git") or {}).get("repositories", []))} if manifest else {}
    out = []
    for repo in sorted(seen):
        access = "push" if repo in pushes else "read"
        index, had = existing.get(repo, (None, None))
        if had == "push" or had == access:
            continue
        out.append(Repository(repo=repo, access=access, count=len(seen[repo]), example=_example(seen[repo]),
                              upgrade=index))
    return out


def _routes(lines: list[Entry], manifest: Manifest | None) -> tuple[list[Route], list[str]]:
    """Without a manifest: the routes the log shows in use. With one: what would have
    carried the placeholders it refused, on their own route's host."""
    used: dict[tuple[str, str], list[Entry]] = collections.defaultdict(list)
    for e in lines:
        if e.get("token_ref") and e["decision"] != "block":
            used[(e["token_ref"], normalize_host(e["host"]))].append(e)
    manifest_routes = list(manifest.data["egress"]["routes"]) if manifest else []
    homes: dict[str, set[str]] = collections.defaultdict(set)
    for ref, host in used:
        homes[ref].add(host)
    for r in manifest_routes:
        homes[r["auth"]["token_ref"]].add(r["host"])
    refused: dict[tuple[str, str], list[Entry]] = collections.defaultdict(list)
    notes = []
    for e in lines:
        m = _OUTSIDE_ROUTE.fullmatch(e["reason"]) if e["decision"] == "block" else None
        if m is None:
            continue
        ref, host = m["ref"], normalize_host(e["host"])
        if any(host_matches(h, host) for h in homes[ref]):
            refused[(ref, host)].append(e)
        else:
            notes.append(f"{host}: {ref}'s placeholder, sent here instead of to its route's host")
    keys = set(refused) if manifest is not None else set(refused) | set(used)
    out = []
    for ref, host in sorted(keys):
        es = used.get((ref, host), []) + refused.get((ref, host), []) if manifest is None else refused[(ref, host)]
        index = next((i for i, r in enumerate(manifest_routes)
                      if r["auth"]["token_ref"] == ref and host_matches(r["host"], host)), None)
        scheme, header = _scheme(ref, used.get((ref, host), []) + refused.get((ref, host), []))
        out.append(Route(token_ref=ref, host=host, paths=collapse(generalize(e["path"]) for e in es) or ("/",),
                         scheme=scheme, header=header, count=len(es), example=_example(es), extends=index,
                         methods=tuple(sorted({e["method"] for e in es}))))
    return out, notes


def _scheme(ref: str, es: list[Entry]) -> tuple[str | None, str | None]:
    headers = sorted({where for e in es for where in (e.get("placeholders") or {}).get(ref, [])
                      if where != "url" and ":" not in where})
    if not headers:
        return None, None
    if headers[0] == "authorization":
        return "bearer", None
    return "header", headers[0]
