"""The secrets made fresh for every launch; never part of a plan, never printed."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping

from bottle.launch.ca import BottleCA, generate_ca


@dataclasses.dataclass(frozen=True, repr=False)
class LaunchSecrets:
    """The CA (with its private key), the scanner's bearer token and the agent's
    placeholders (by token_ref)."""

    ca: BottleCA
    scanner_token: str
    placeholders: Mapping[str, str]

    def __repr__(self) -> str:
        return f"LaunchSecrets(ca={self.ca!r})"


def make_secrets(bottle_id: str, token_refs: tuple[str, ...]) -> LaunchSecrets:
    return LaunchSecrets(
        ca=generate_ca(bottle_id),
        scanner_token=secrets.token_urlsafe(32),
        placeholders={
            ref: f"bottle-placeholder-{ref.lower().replace('_', '-')}-{secrets.token_hex(12)}" for ref in token_refs
        },
    )
