"""The backend interface. The orchestration in bottle/run.py and the CLI only know this.

A backend turns the backend-agnostic `BottlePlan` into a plan of its own (`plan()`: pure,
touches no engine or cluster), which the dry-run prints and `launch()` carries out.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from bottle.launch.secrets import LaunchSecrets
from bottle.plan import BottlePlan

# Marks what only the launch knows: the `bottle start` process that owns a bottle.
OWNER = "<host:pid>"


class BackendPlan(Protocol):
    """Everything a backend will create for one bottle, exactly as it will create it."""

    @property
    def bottle(self) -> BottlePlan: ...

    def to_dict(self) -> dict[str, Any]:
        """The `bottle start --dry-run --format=json` document (docs/dry-run-json.md)."""
        ...

    def render_text(self) -> str:
        """What `bottle start --dry-run` prints."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunningBottle:
    """A launched bottle whose proxy is serving and whose agent trusts the bottle's CA."""

    bottle_id: str
    agent: str
    proxy: str
    scanner: str
    addresses: Mapping[str, str]


class BottleBackend(abc.ABC):
    """Turns a backend plan into running resources and removes them again."""

    name: ClassVar[str] = ""

    def plan(self, bottle: BottlePlan) -> BackendPlan:
        """This backend's plan for `bottle`; makes no contact with an engine or cluster."""
        raise NotImplementedError(f"the {self.name or type(self).__name__} backend makes no plan")

    @abc.abstractmethod
    def launch(self, plan: Any, secrets: LaunchSecrets, *, env: Mapping[str, str]) -> contextlib.AbstractContextManager[RunningBottle]:
        """Create and start everything in `plan` (this backend's own plan), wait until it is
        ready, and remove it all on exit, however the block is left. A failure while
        starting removes what was made and raises."""

    @abc.abstractmethod
    def follow_egress_log(self, running: RunningBottle, path: Path) -> contextlib.AbstractContextManager[None]:
        """Copy the proxy's JSON request log to `path` while the block runs, completely at exit."""

    @abc.abstractmethod
    def run_agent(self, running: RunningBottle, command: Sequence[str], *, interactive: bool) -> int:
        """Run the agent command in the bottle and return its exit code."""

    @abc.abstractmethod
    def cleanup(self, *, remove_running: bool, dry_run: bool, echo: Callable[[str], None]) -> int:
        """Remove leftovers of bottles whose `bottle start` is gone. Returns how many were removed."""


def owner_label() -> str:
    """The value that replaces OWNER: this `bottle start` process, as host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the `bottle start` named by an owner value still runs (on this host)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
