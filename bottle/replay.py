"""`bottle policy replay`: what a manifest would do to traffic that was logged.

Every logged request goes through the proxy's own decision functions (bottle/mitm/decide.py,
credentials.py, git.py, github.py), in the order the request pipeline applies them
(bottle/mitm/pipeline.py), against the policy the proxy would load for the manifest
(bottle/launch/policy_file.py). Nothing here decides by itself; this module only rebuilds
each request from its log line and reads the verdicts. The pipeline imports mitmproxy, which
the host does not have, so the order of the steps is repeated here; a unit test runs the
same requests through the live addons and through replay and compares every verdict.

What the log does not hold cannot be replayed: a push's refs and commits, a GraphQL
document, a body the scanner did not see before (or would no longer see). Such requests
are reported as undecidable, with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from bottle.egresslog import Entry, requests
from bottle.errors import LogError
from bottle.launch.policy_file import build_policy
from bottle.manifest import Manifest
from bottle.mitm import credentials, decide, git, github
from bottle.mitm.logformat import SCAN_COVERAGE
from bottle.mitm.policy import AllowRule, Policy, host_matches, normalize_host
from bottle.mitm.redact import REDACTED
from bottle.plan import build_plan

REPORT_VERSION = 1
CHANGES = ("newly_blocked", "newly_allowed", "unchanged", "undecidable")
_NEUTRAL = "bottle-replay-not-a-placeholder"
# Refusals that are not the policy's to make (the client, domain fronting): they stay.
_NOT_POLICY = ("misdirected request: ", "client ")
_ENVIRONMENT = ("scanner unavailable", "internal error in bottle's", "proxy error: ")
_BODY_REFUSALS = ("request body of ", "decoded request body exceeds", "content encoding ", " body could not be decoded",
                  "body cannot be scanned", "multipart")
_COMPRESSED_ANSWER = "compressed response to a credentialed request"


def replay_placeholder(token_ref: str) -> str:
    return f"bottle-replay-{token_ref}-placeholder"


def replay_policy(manifest: Manifest) -> Policy:
    """The policy the proxy would enforce for manifest, with stand-ins for launch facts."""
    plan = build_plan(manifest, env={}, run_id="replay")
    return build_policy(
        plan,
        clients=["127.0.0.1"],
        listen_host="127.0.0.1",
        listen_port=8080,
        scanner_url="http://scanner.invalid/api/v1/scan",
        scanner_token="replay",
        placeholders={ref: replay_placeholder(ref) for ref in plan.egress.token_refs},
        upstream_ca_path=None,
        dns_host=None,
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    decision: str  # allow | would_block | block | undecidable
    rule: str | None = None
    reason: str = ""
    token_ref: str | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.decision in ("allow", "would_block")


@dataclasses.dataclass(frozen=True)
class Result:
    entry: Entry
    before: Outcome
    after: Outcome

    @property
    def change(self) -> str:
        if self.after.decision == "undecidable":
            return "undecidable"
        if self.before.passed and not self.after.passed:
            return "newly_blocked"
        if not self.before.passed and self.after.passed:
            return "newly_allowed"
        return "unchanged"

    def to_dict(self) -> dict[str, Any]:
        d = self.entry.data
        return {
            "log": str(self.entry.file), "line": self.entry.line, "time": d.get("time"),
            "method": d["method"], "scheme": d.get("scheme"), "host": d["host"], "port": d["port"], "path": d["path"],
            "change": self.change,
            "before": {"decision": self.before.decision, "rule": self.before.rule, "reason": self.before.reason},
            "after": {"decision": self.after.decision, "rule": self.after.rule, "reason": self.after.reason,
                      "token_ref": self.after.token_ref, "note": self.after.note},
        }


@dataclasses.dataclass(frozen=True)
class Report:
    manifest: str
    mode: str
    logs: tuple[str, ...]
    results: tuple[Result, ...]

    def of(self, change: str) -> list[Result]:
        return [r for r in self.results if r.change == change]

    @property
    def newly_blocked(self) -> list[Result]:
        return self.of("newly_blocked")

    def counts(self) -> dict[str, int]:
        counted = collections.Counter(r.change for r in self.results)
        return {change: counted[change] for change in CHANGES}

    def to_dict(self) -> dict[str, Any]:
        return {"report_version": REPORT_VERSION, "manifest": self.manifest, "mode": self.mode, "logs": list(self.logs),
                "counts": self.counts(), "results": [r.to_dict() for r in self.results]}


def replay_entries(entries: Iterable[Entry], manifest: Manifest) -> Report:
    policy = replay_policy(manifest)
    entries = list(entries)
    results = []
    for entry in requests(entries) + [e for e in entries if e.kind == "request" and e.is_message]:
        if entry.get("log_format", 1) < 2:
            raise LogError(f"{entry.where}: log format 1 lacks what replay needs (headers, placeholders, scan)",
                           tip="replay a log written by this version of bottle's proxy")
        before = Outcome(entry["decision"], entry["rule"], entry["reason"], entry.get("token_ref"))
        results.append(Result(entry, before, evaluate(policy, entry)))
    logs = tuple(dict.fromkeys(str(e.file) for e in entries))
    return Report(manifest=str(manifest.path), mode=policy.mode, logs=logs, results=tuple(results))


# -- one request, step by step as in bottle/mitm/pipeline.py -------------------------------


@dataclasses.dataclass
class _State:
    """What the pipeline's FlowState would hold, as far as the verdict goes."""

    rule: str | None = None
    would_block: decide.Verdict | None = None
    token_ref: str | None = None

    def judge(self, verdict: decide.Verdict) -> Outcome | None:
        """pipeline._judge: a refusal ends the request; a discover pass is remembered."""
        if not verdict.allowed:
            return self.block(verdict.reason, verdict.rule_id)
        if verdict.would_block:
            if self.would_block is None:
                self.would_block = verdict
                self.rule = verdict.rule_id or self.rule
        elif self.rule is None:
            self.rule = verdict.rule_id
        return None

    def block(self, reason: str, rule_id: str | None = None) -> Outcome:
        return Outcome("block", rule_id or self.rule, reason, self.token_ref)

    def audit(self, reason: str) -> None:
        if self.would_block is None:
            self.would_block = decide.Verdict(True, 200, self.rule, reason, would_block=True)

    def passed(self, note: str = "") -> Outcome:
        if self.would_block is not None:
            return Outcome("would_block", self.rule, self.would_block.reason, self.token_ref, note)
        return Outcome("allow", self.rule, "", self.token_ref, note)


def undecidable(reason: str) -> Outcome:
    return Outcome("undecidable", None, reason)


def evaluate(policy: Policy, entry: Entry) -> Outcome:
    d = entry.data
    method, host, port, path = d["method"], d["host"], d["port"], d["path"]
    scheme = d.get("scheme") or "https"
    if d["decision"] == "block" and d["reason"].startswith(_NOT_POLICY):
        return Outcome("block", d["rule"], d["reason"], note="not a policy decision: kept as logged")
    if entry.is_message:
        return undecidable("a WebSocket message is judged on its content, which the log does not hold")
    if method == "CONNECT":
        return _connect(policy, entry)
    if _redaction_matters(policy, host, method, path):
        return undecidable("the log redacted part of this request's method or path (it looked like a token), "
                           "and a rule for its host depends on that part")
    st = _State()
    verdict = decide.check_request(policy, host, port, method, path)
    if (out := st.judge(verdict)) is not None:
        return out
    rule = None if verdict.would_block else _rule(policy, verdict)
    route = credentials.find_route(policy, host, method, path)
    headers, url = _request(entry, policy, scheme, host, port, path)
    if (out := st.judge(credentials.check_credentials(policy, route, scheme, headers, url))) is not None:
        return out
    st.token_ref = route.token_ref if route is not None else None
    name = normalize_host(host)
    git_verdict = git.check_request(policy.git, name, path)
    if git_verdict is not None:
        if not git_verdict.allowed:
            return st.block(git_verdict.reason, git_verdict.rule_id)
        st.rule = git_verdict.rule_id
    if name == github.HOST and (refusal := github.check_headers(method, headers)
                                or github.check(policy.github_deny, policy.git, method, path, None)) is not None:
        return st.block(refusal.reason, refusal.rule_id)
    return _content(policy, entry, st, rule, git_verdict is not None and git.is_push(method, path))


def _redaction_matters(policy: Policy, host: str, method: str, path: str) -> bool:
    """Whether the redacted parts of a logged request could change a rule's verdict: a
    redacted method with rules naming methods, or a redacted path segment inside a rule's
    path prefix."""
    rules = [*decide.rules_for_host(policy, host), *(r for r in policy.routes if host_matches(r.host, host))]
    if method == REDACTED and any(r.methods is not None for r in rules):
        return True
    if REDACTED not in path:
        return False
    known = path.split(REDACTED, 1)[0]
    return any(p.startswith(known) and len(p) > len(known) for r in rules for p in (r.paths or ()))


def _connect(policy: Policy, entry: Entry) -> Outcome:
    d = entry.data
    st = _State()
    if (out := st.judge(decide.check_connect(policy, d["host"], d["port"]))) is not None:
        return out
    passthrough = decide.passthrough_rule(policy, d["host"], d["port"])
    if passthrough is not None:
        st.rule = passthrough.id
        return st.passed("TLS passthrough: not decrypted, not scanned")
    if entry.is_passthrough:
        return st.passed("now decrypted: each request in the tunnel is checked on its own")
    return st.passed("the requests inside the tunnel were never seen")


def _rule(policy: Policy, verdict: decide.Verdict) -> AllowRule | None:
    return next((rule for rule in policy.allow if rule.id == verdict.rule_id), None)


def _request(entry: Entry, policy: Policy, scheme: str, host: str, port: int,
             path: str) -> tuple[list[tuple[str, str]], str]:
    """Headers and URL that carry each placeholder where the agent put it, and nothing else
    the credential check could see."""
    where: Mapping[str, list[str]] = entry["placeholders"]
    known = {ref: replay_placeholder(ref) for ref in where if ref in policy.placeholders}
    headers = []
    for name in entry["headers"]:
        whole = [p for ref, p in known.items() if name in where[ref]]
        partial = [p for ref, p in known.items() if f"{name}:partial" in where[ref]]
        if len(whole) == 1 and not partial:
            value = f"Bearer {whole[0]}"
        elif whole or partial:
            value = " ".join(["x", *whole, *partial, "x"])
        else:
            value = _NEUTRAL
        headers.append((name, value))
    in_url = [p for ref, p in known.items() if "url" in where[ref]]
    url = f"{scheme}://{host}:{port}{path}"
    if in_url:
        url += ("&" if "?" in path else "?") + "&".join(f"k={p}" for p in in_url)
    return headers, url


def _content(policy: Policy, entry: Entry, st: _State, rule: AllowRule | None, is_push: bool) -> Outcome:
    """The body and scan steps, from what the log says the scanner saw then."""
    d = entry.data
    reason = d["reason"]
    if d["decision"] == "block" and reason.startswith(_ENVIRONMENT):
        return undecidable(f"when logged, the request was refused for a reason outside the policy ({reason})")
    is_graphql = normalize_host(d["host"]) == github.HOST and github.is_graphql(d["method"], d["path"])
    streams = is_push or (rule is not None and not rule.scan_body and not is_graphql)
    if is_push:
        if d["decision"] == "block" and reason.startswith("git push with content-encoding"):
            return st.block(reason)
    elif not streams and d["decision"] == "block" and d["status"] in (413, 415) and any(
            p in reason for p in _BODY_REFUSALS):
        return st.block(reason)  # the same body again, still buffered and unpacked
    if is_graphql and (out := _graphql(policy, d, st)) is not None:
        return out
    out = _scan(policy, d, st, "headers" if streams else "full")
    if out is not None:
        return out
    if is_push:
        return undecidable("a push is judged on the refs and commits in its body, which the log does not hold")
    if reason.startswith(_COMPRESSED_ANSWER) and st.token_ref is not None:
        return st.block(reason)  # upstream compresses its answer again; the credential is still injected
    note = "never scanned: the scanner decides when it is sent" if d["scan"] == "none" else ""
    return st.passed(note)


def _graphql(policy: Policy, d: Mapping[str, Any], st: _State) -> Outcome | None:
    rule_id = d["rule"] or ""
    if d["decision"] == "block" and rule_id.startswith(("github.deny.default.", "github.graphql")):
        return st.block(d["reason"], rule_id)  # the built-in refusals apply to the same document again
    custom = [deny for deny in policy.github_deny if deny.graphql is not None]
    reached = d["scan"] != "none" or d["decision"] != "block"
    if not reached:
        return undecidable("GraphQL mutations are judged on the request body, which the log does not hold")
    if custom:
        return undecidable("github.deny has GraphQL refusals, judged on the request body, which the log does not hold")
    return None


def _scan(policy: Policy, d: Mapping[str, Any], st: _State, sees: str) -> Outcome | None:
    saw = d["scan"]
    if saw == "none":
        return None
    findings = d["scanner"]
    wider = SCAN_COVERAGE.index(sees) > SCAN_COVERAGE.index(saw)
    narrower = SCAN_COVERAGE.index(sees) < SCAN_COVERAGE.index(saw)
    has_body = d["bytes_up"] > 0
    if findings and narrower and has_body:
        return undecidable("the scanner's finding may be in the body, which this policy streams unscanned")
    if not findings and wider and has_body:
        return undecidable("the scanner did not see the body when this was logged; this policy scans it")
    if not findings:
        return None
    shown = d["reason"] if d["reason"].startswith("scanner found ") else "scanner found " + "; ".join(findings)
    if policy.scanner.mode == "audit":
        st.audit(shown)
        return None
    return st.block(shown)


# -- the report ---------------------------------------------------------------------------------


def render_report(report: Report) -> str:
    counts = report.counts()
    total = len(report.results)
    lines = [f"Replayed {total} request{'s' if total != 1 else ''} from {len(report.logs)} "
             f"log{'s' if len(report.logs) != 1 else ''} against {report.manifest} (egress mode {report.mode}):", ""]
    labels = {"newly_blocked": "newly blocked", "newly_allowed": "newly allowed", "unchanged": "unchanged",
              "undecidable": "undecidable"}
    for change in CHANGES:
        lines.append(f"  {labels[change]:<14} {counts[change]:>6}")
    for change in ("newly_blocked", "newly_allowed", "undecidable"):
        group = report.of(change)
        if not group:
            continue
        lines += ["", f"{labels[change].capitalize()}:"]
        for (method, url, rule, reason, note), items in _grouped(group, change).items():
            shown = reason or note
            lines.append(f"  {method} {url}  ×{len(items)}  [{rule or '-'}] {shown}".rstrip())
            lines.append(f"      first at {items[0].entry.where}")
    return "\n".join(lines) + "\n"


def _grouped(results: list[Result], change: str) -> dict[tuple, list[Result]]:
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        d = r.entry.data
        default = {"https": 443, "http": 80}.get(str(d.get("scheme")), 443)
        port = "" if d["port"] == default else f":{d['port']}"
        url = f"{d.get('scheme') or 'https'}://{d['host']}{port}{d['path']}"
        shown = r.after if change != "newly_allowed" else r.before
        key = (d["method"], url, shown.rule, shown.reason, r.after.note)
        groups.setdefault(key, []).append(r)
    return groups
