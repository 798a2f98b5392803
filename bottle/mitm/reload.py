"""What of a running proxy's policy can change live, and the view of it the host may see.

A live reload (`bottle reload`, docs/prds/0013-live-policy-and-component-health.md) sends
the proxy only the reloadable parts of the policy: the rules, never a secret. The proxy side
(`bottle.mitm.receive --reload`) merges them into the policy it serves with `merge_update`,
so the placeholders and the scanner token never leave the proxy container. The host reads
the current policy back with `public_view`, which has the token_refs but no secret value.

Standard library only: this module runs inside the proxy image, and the host imports it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# Top-level policy keys a reload replaces as a whole, and the scanner keys it may set.
RELOADABLE = ("mode", "allow", "routes", "git", "github")
RELOADABLE_SCANNER = ("mode", "responses", "url")
REDACTED = "<redacted>"


class UpdateError(ValueError):
    """The update document is not one a reload takes."""


def merge_update(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`current` (a policy document) with the reloadable keys of `update` replaced.
    Everything else (listen, clients, placeholders, the scanner's token, dns, transparent,
    upstream_ca) stays as it is; the result still has to pass `parse_policy`."""
    if not isinstance(update, Mapping):
        raise UpdateError("the update must be a JSON object")
    unknown = sorted(set(update) - {*RELOADABLE, "scanner"})
    if unknown:
        raise UpdateError(f"cannot change {', '.join(unknown)} on a reload (only "
                          f"{', '.join((*RELOADABLE, 'scanner'))})")
    merged = copy.deepcopy(dict(current))
    for key in RELOADABLE:
        if key in update:
            merged[key] = copy.deepcopy(update[key])
    if "scanner" in update:
        scanner = update["scanner"]
        if not isinstance(scanner, Mapping):
            raise UpdateError("scanner: must be an object")
        unknown = sorted(set(scanner) - set(RELOADABLE_SCANNER))
        if unknown:
            raise UpdateError(f"scanner: cannot change {', '.join(unknown)} on a reload "
                              f"(only {', '.join(RELOADABLE_SCANNER)})")
        if not isinstance(merged.get("scanner"), dict):
            raise UpdateError("the current policy has no scanner")
        merged["scanner"].update(copy.deepcopy(dict(scanner)))
    return merged


def public_view(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy document without a secret: placeholders become the sorted list of their
    token_refs, and the scanner token is replaced by a marker."""
    view = copy.deepcopy(dict(policy))
    placeholders = view.get("placeholders")
    view["placeholders"] = sorted(placeholders) if isinstance(placeholders, Mapping) else []
    if isinstance(view.get("scanner"), dict) and "token" in view["scanner"]:
        view["scanner"]["token"] = REDACTED
    return view
