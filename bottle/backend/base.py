"""The backend interface. The orchestration in bottle/run.py only knows this."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bottle.launch.secrets import LaunchSecrets


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunningBottle:
    """A launched bottle whose proxy is serving and whose agent trusts the bottle's CA."""

    bottle_id: str
    agent: str
    proxy: str
    scanner: str
    addresses: Mapping[str, str]
    # Transparent capture: the helper that lists what the capture rejected, run before teardown.
    capture_report: tuple[str, ...] | None = None


class BottleBackend(abc.ABC):
    """Turns a backend plan into running resources and removes them again."""

    @abc.abstractmethod
    def launch(self, plan: Any, secrets: LaunchSecrets, *, env: Mapping[str, str]) -> contextlib.AbstractContextManager[RunningBottle]:
        """Create and start everything, wait until it is ready, and remove it all on exit,
        however the block is left. A failure while starting removes what was made and raises."""

    @abc.abstractmethod
    def follow_egress_log(self, running: RunningBottle, path: Path) -> contextlib.AbstractContextManager[None]:
        """Copy the proxy's JSON request log to `path` while the block runs, completely at exit."""

    @abc.abstractmethod
    def run_agent(self, running: RunningBottle, command: Sequence[str], *, interactive: bool) -> int:
        """Run the agent command in the bottle and return its exit code."""

    @abc.abstractmethod
    def cleanup(self, *, remove_running: bool, dry_run: bool, echo: Callable[[str], None]) -> int:
        """Remove leftovers of bottles whose `bottle start` is gone. Returns how many were removed."""

