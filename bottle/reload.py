"""`bottle reload ID MANIFEST`: apply a manifest's policy to a running bottle, live.

Only the policy the proxy enforces changes live: egress rules and credential routes, the
egress mode, the git and GitHub policy, the scanner's mode and response scanning. Whatever
was fixed when the bottle's containers were created (images, networks, the credentials'
token_refs, the capture, the workspace, resources, the agent's user and environment) is
compared with what the engine reports, and any difference refuses the reload, naming it
(docs/prds/0013-live-policy-and-component-health.md).

The host never sees a secret here: it reads the proxy's policy back without placeholders
or scanner token (bottle.mitm.reload.public_view) and sends only the reloadable parts,
which the proxy merges into its own policy (`bottle.mitm.receive --reload`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bottle import state
from bottle.errors import LiveError
from bottle.mitm.policy import to_document
from bottle.plan import BottlePlan

def update_for(plan: BottlePlan) -> dict[str, Any]:
    """What a reload sends: the reloadable parts of `plan`'s policy (bottle.mitm.reload.RELOADABLE
    and the scanner's mode and responses), as the policy document writes them."""
    return {
        "mode": plan.egress.mode,
        "allow": to_document(plan.egress.allow),
        "routes": to_document(plan.egress.routes),
        "git": to_document(plan.git),
        "github": {"deny": to_document(plan.github_deny)} if plan.github_deny else None,
        "scanner": {"mode": plan.scanner.mode, "responses": plan.scanner.responses},
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiveBottle:
    """A running bottle as its engine and its proxy report it (no secret)."""

    bottle_id: str
    proxy: str
    policy: Mapping[str, Any]  # bottle.mitm.reload.public_view of the served policy
    sha256: str
    upstream_ca_sha256: str | None
    # What was fixed at create, read back from the engine: a name (e.g. "agent image") -> value.
    fixed: Mapping[str, Any]


def run_id_of(bottle_id: str) -> str:
    return bottle_id.rsplit("-", 1)[-1]


def fixed_refusals(live: LiveBottle, planned: Mapping[str, Any], plan: BottlePlan,
                   upstream_ca_sha256: str | None) -> list[str]:
    """One line per thing the new manifest changes that cannot change while the bottle runs."""
    out = []
    if plan.bottle_id != live.bottle_id:
        out.append(f"name: the manifest names bottle {plan.name!r}, the running bottle is {live.bottle_id}")
    for key, value in planned.items():
        if key not in live.fixed:
            continue
        running = live.fixed[key]
        if key == "agent.env" and isinstance(running, Mapping) and isinstance(value, Mapping):
            # The container's environment also holds the image's and bottle's own variables.
            running = {k: running.get(k) for k in value}
        if running != value:
            out.append(f"{key}: {_show(running)} → {_show(value)}")
    running_refs = sorted(live.policy.get("placeholders") or [])
    new_refs = sorted(dict.fromkeys(plan.egress.token_refs))
    if running_refs != new_refs:
        added, removed = sorted(set(new_refs) - set(running_refs)), sorted(set(running_refs) - set(new_refs))
        what = "; ".join(filter(None, (f"added {', '.join(added)}" if added else "",
                                       f"removed {', '.join(removed)}" if removed else "")))
        out.append(f"credentials (the routes' token_refs): {what}")
    transparent = live.policy.get("transparent")
    running_capture = "transparent" if transparent else "proxy"
    if running_capture != plan.egress.capture:
        out.append(f"egress.capture: {running_capture} → {plan.egress.capture}")
    elif transparent:
        running_ports = sorted(p["port"] for p in transparent.get("ports") or [])
        new_ports = sorted(p.port for p in plan.egress.captured_ports)
        if running_ports != new_ports:
            out.append(f"the ports transparent capture redirects (from the allow rules' ports): "
                       f"{running_ports} → {new_ports}")
    if (live.upstream_ca_sha256 or None) != (upstream_ca_sha256 or None):
        out.append("egress.upstream_ca: the CA the proxy trusts for upstreams differs "
                   f"({'none' if not live.upstream_ca_sha256 else 'sha256 ' + live.upstream_ca_sha256[:12]} → "
                   f"{'none' if not upstream_ca_sha256 else 'sha256 ' + upstream_ca_sha256[:12]})")
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# -- what changes --------------------------------------------------------------------


def describe_changes(current: Mapping[str, Any], update: Mapping[str, Any]) -> list[str]:
    """`+ …`, `- …` and `~ …` lines: what the update changes in the current policy."""
    out: list[str] = []
    if "mode" in update and current.get("mode") != update["mode"]:
        out.append(f"~ egress.mode: {current.get('mode')} → {update['mode']}")
    out += _list_changes(current.get("allow") or [], update.get("allow") or [], _allow_text)
    out += _list_changes(current.get("routes") or [], update.get("routes") or [], _route_text)
    out += _git_changes(current.get("git"), update.get("git"))
    out += _list_changes((current.get("github") or {}).get("deny") or [], (update.get("github") or {}).get("deny") or [],
                         _deny_text)
    scanner, new_scanner = current.get("scanner") or {}, update.get("scanner") or {}
    for key in ("mode", "responses"):
        if key in new_scanner and scanner.get(key) != new_scanner[key]:
            out.append(f"~ scanner.{key}: {scanner.get(key)} → {new_scanner[key]}")
    return out


def _key(item: Mapping[str, Any]) -> str:
    """A rule by content: its id (its index in the manifest) does not make it another rule."""
    return json.dumps({k: v for k, v in item.items() if k != "id"}, sort_keys=True)


def _list_changes(old: list, new: list, text: Callable[[Mapping[str, Any]], str]) -> list[str]:
    before, after = Counter(_key(i) for i in old), Counter(_key(i) for i in new)
    removed = [i for i in old if before[_key(i)] > after[_key(i)]]
    added = [i for i in new if after[_key(i)] > before[_key(i)]]
    return [f"- {text(i)}" for i in _dedupe(removed)] + [f"+ {text(i)}" for i in _dedupe(added)]


def _dedupe(items: list) -> list:
    seen, out = set(), []
    for i in items:
        if _key(i) not in seen:
            seen.add(_key(i))
            out.append(i)
    return out


def _methods(rule: Mapping[str, Any]) -> str:
    return ",".join(rule["methods"]) if rule.get("methods") else "any method"


def _where(rule: Mapping[str, Any]) -> str:
    paths = rule.get("paths")
    return rule["host"] + (f" {' '.join(paths)}" if paths else "")


def _allow_text(rule: Mapping[str, Any]) -> str:
    extra = []
    if rule.get("ports") and sorted(rule["ports"]) not in ([443], [80, 443]):
        extra.append("ports " + ",".join(str(p) for p in rule["ports"]))
    if rule.get("tls") == "passthrough":
        extra.append("tls passthrough")
    if rule.get("private_upstream"):
        extra.append("private upstream")
    if rule.get("scan_body") is False:
        extra.append("body not scanned")
    return f"allow {_methods(rule)} {_where(rule)}" + (f" ({', '.join(extra)})" if extra else "")


def _route_text(route: Mapping[str, Any]) -> str:
    return f"route {route['token_ref']} ({route['scheme']}) for {_methods(route)} {_where(route)}"


def _deny_text(deny: Mapping[str, Any]) -> str:
    what = f"graphql {deny['graphql']}" if deny.get("graphql") else f"{deny.get('method') or 'any method'} {deny.get('path')}"
    return f"github deny {what}"


def _git_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None or new is None:
        out = ["+ git policy" if old is None else "- git policy"]
        old, new = old or {"repositories": []}, new or {"repositories": []}
    else:
        out = []
    out += _list_changes(old.get("repositories") or [], new.get("repositories") or [],
                         lambda r: f"git {r['access']} {r['host']}/{r['path']}")
    for key in ("protected_branches", "push_branches", "allow_force_push", "allow_branch_deletion"):
        if key in old and key in new and old[key] != new[key]:
            out.append(f"~ git.{key}: {_show(old[key])} → {_show(new[key])}")
    return out


# -- after a reload ------------------------------------------------------------------------


def reload_state_path(bottle_id: str, env: Mapping[str, str]) -> Path:
    """Where `bottle reload` leaves the last update it applied (no secret), so the `bottle
    start` that watches the bottle applies it again when it re-delivers a restarted proxy's
    policy (its run directory is a tmpfs)."""
    return state.bottles_dir(env) / f"{bottle_id}.reload.json"


def save_update(bottle_id: str, update: Mapping[str, Any], env: Mapping[str, str]) -> None:
    state.write_json(reload_state_path(bottle_id, env), update)


def saved_update(bottle_id: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    path = reload_state_path(bottle_id, env)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LiveError(f"{path}: cannot read the last reload of {bottle_id}: {e}") from None


def forget_update(bottle_id: str, env: Mapping[str, str]) -> None:
    reload_state_path(bottle_id, env).unlink(missing_ok=True)


# -- the command ---------------------------------------------------------------------------


def manifest_of(bottle_id: str, env: Mapping[str, str]) -> Path:
    """The manifest a bottle was started from, when its state file records it (detached runs)."""
    path = state.state_path(state.bottles_dir(env), bottle_id)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("manifest")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not recorded:
        raise LiveError(f"no manifest recorded for {bottle_id}: give the manifest to reload, "
                        f"e.g. `bottle reload {bottle_id} bottle.yaml`")
    return Path(recorded)


def reload_bottle(backend: Any, ref: str, manifest: Path | None, *, env: Mapping[str, str], mode: str | None,
                  dry_run: bool, echo: Callable[[str], None], loaded: Any = None,
                  stat_workspace: Callable[[str], Any] | None = None) -> None:
    """Validate `manifest` against the running bottle `ref`, print what changes, apply it."""
    from bottle.launch.policy_file import read_upstream_ca
    from bottle.manifest import load_manifest
    from bottle.plan import build_plan, proxy_image

    live: LiveBottle = backend.live_bottle(ref)
    if loaded is None:
        loaded = load_manifest(manifest or manifest_of(live.bottle_id, env))
    # Planned as `start` plans it, the workspace owner included (agent.user follows it).
    plan = build_plan(loaded, env=env, run_id=run_id_of(live.bottle_id), proxy_image=proxy_image(env), mode=mode,
                      stat_workspace=stat_workspace)
    ca = plan.egress.upstream_ca
    ca_sha = hashlib.sha256(read_upstream_ca(ca)).hexdigest() if ca else None
    refused = fixed_refusals(live, backend.planned_fixed(backend.plan(plan)), plan, ca_sha)
    if refused:
        raise LiveError(
            f"cannot reload {live.bottle_id}: the manifest changes what is fixed while the bottle runs; "
            "the running policy stays:\n" + "\n".join(f"  {line}" for line in refused),
            tip="only egress rules and routes, egress.mode, git, github and the scanner's mode can change live; "
            "for anything else stop the bottle and start it again",
        )
    update = update_for(plan)
    changes = describe_changes(live.policy, update)
    if not changes:
        echo(f"{live.bottle_id}: the policy is unchanged; nothing to reload")
        return
    for line in changes:
        echo(line)
    if dry_run:
        echo(f"{live.bottle_id}: not reloaded (--dry-run)")
        return
    result = backend.apply_update(live, update)
    save_update(live.bottle_id, update, env)
    sha = result["policy_sha256"]
    logged = backend.policy_reload_logged(live, sha)
    if logged is not None and logged.get("decision") != "allow":
        raise LiveError(f"the proxy of {live.bottle_id} did not take the new policy: {logged.get('reason')}")
    echo(f"{live.bottle_id}: reloaded (policy sha256 {sha[:12]})")
