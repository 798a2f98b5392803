"""Notice a scanner or proxy that dies while the bottle runs, and say when it is back.

The engine restarts them by its own restart policy (plan.py: `--restart on-failure`); this
watcher, run by `bottle start` beside the agent, looks at their state (one `inspect` for
both: it works the same on Docker and Podman, where `events` differ) as soon as the engine's
event stream reports one died, every IDLE_SECONDS otherwise (each look spawns an engine
client: twice a second, an idle bottle cost a fifth of a core), and twice a second while
one is down; it tells the user at once, and hands a restarted proxy back its policy and CA, which lived on a
tmpfs (docs/prds/0013-live-policy-and-component-health.md).

`Component` is the state machine, fed observations; it has no I/O, so it is tested alone.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable

POLL_SECONDS = 0.5  # while a component is down
IDLE_SECONDS = 5.0  # while both are up: a death event wakes the watcher at once
RETRY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """One container's state as `inspect` reports it; `status` None: the container is gone."""

    status: str | None
    exit_code: int | None = None
    started_at: str = ""
    restart_count: int = 0
    health: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


GONE = Observation(status=None)


def parse_inspect(output: str) -> dict[str, Observation]:
    """Lines of `NAME<TAB>{{json .State}}<TAB>{{.RestartCount}}` (the template `TEMPLATE`)."""
    found = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, state_json, restarts = parts
        try:
            state = json.loads(state_json)
        except json.JSONDecodeError:
            continue
        health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status") or None
        found[name.lstrip("/")] = Observation(
            status=str(state.get("Status") or "").lower() or None,
            exit_code=state.get("ExitCode"),
            started_at=str(state.get("StartedAt") or ""),
            restart_count=int(restarts) if restarts.strip().isdigit() else 0,
            health=health,
        )
    return found


TEMPLATE = "{{.Name}}\t{{json .State}}\t{{.RestartCount}}"


def parse_die_event(line: str) -> tuple[str, int] | None:
    """(container, exit code) from one line of `events` about a container that died:
    Docker's `{{json .}}` (status die, Actor.Attributes) or Podman's `--format json`."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if event.get("status") == "die" and "exitCode" in attributes:  # Docker
        name, code = attributes.get("name"), attributes.get("exitCode")
    elif event.get("Status") == "died":  # Podman
        name, code = event.get("Name"), event.get("ContainerExitCode")
    else:
        return None
    try:
        return str(name), int(code)
    except (TypeError, ValueError):
        return None


class ExitCodes:
    """The exit codes the engine's event stream reports, by container name."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.changed = threading.Condition()
        self.on_death: Callable[[], None] = lambda: None  # the watcher's wake()

    def feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            found = parse_die_event(line)
            if found:
                with self.changed:
                    self.codes[found[0]] = found[1]
                    self.changed.notify_all()
                self.on_death()

    def get(self, name: str, wait: float = 1.0) -> int | None:
        with self.changed:
            self.changed.wait_for(lambda: name in self.codes, timeout=wait)
            return self.codes.pop(name, None)


class StopBottle(Exception):
    """Raised by a restore that found the bottle cannot go on (it has said why and asked
    for the teardown): the watcher stops."""


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # died | ready | gone
    exit_code: int | None = None


class Component:
    """One restartable container: up → (died) → down → (ready) → up again once `back()`.

    Died: it is not running, or it started again since the last look (a restart between
    two polls), or the engine counted another restart. Ready: running again with a new
    start, and healthy when it has a health check. The caller makes it `back()` once it
    serves again (for the proxy: after its policy was re-delivered)."""

    def __init__(self, role: str, first: Observation, *, needs_health: bool) -> None:
        self.role = role
        self.needs_health = needs_health
        self.up = True
        self.gone = False
        self.started_at = first.started_at
        self.restarts = first.restart_count
        self.ready_since: str | None = None  # the start that was reported ready

    def observe(self, obs: Observation) -> list[Event]:
        if obs.status is None:
            if self.gone:
                return []
            self.gone = True
            was_up, self.up = self.up, False
            return [Event("gone")] if not was_up else [Event("died", None), Event("gone")]
        self.gone = False
        events = []
        restarted = obs.started_at != self.started_at or obs.restart_count != self.restarts
        if self.up and (not obs.running or restarted):
            self.up = False
            self.ready_since = None
            # A restart missed between polls: the exit code is the old run's only while
            # the container is down; running again, the engine reports 0.
            events.append(Event("died", obs.exit_code if not obs.running or obs.exit_code else None))
        self.started_at, self.restarts = obs.started_at, obs.restart_count
        if not self.up and obs.running and self.ready_since != obs.started_at and self._healthy(obs):
            self.ready_since = obs.started_at
            events.append(Event("ready"))
        return events

    def back(self) -> None:
        self.up = True

    def retry(self) -> None:
        """Getting it back failed: report it ready again on the next observation."""
        self.ready_since = None

    def _healthy(self, obs: Observation) -> bool:
        return not self.needs_health or obs.health in (None, "healthy")


class Watcher:
    """Polls `inspect` for the scanner and the proxy and acts on what `Component` reports.

    `inspect(names)` returns Observations by name; `restore_proxy()` re-delivers the
    proxy's files and raises on failure; `scanner_back()` runs when the scanner serves again
    (e.g. to update the proxy when the scanner's address changed); `say` prints a line;
    `before_poll(names)` runs health checks where the engine does not (Podman)."""

    def __init__(
        self,
        *,
        bottle_id: str,
        scanner: str,
        proxy: str,
        inspect: Callable[[list[str]], dict[str, Observation]],
        restore_proxy: Callable[[], None],
        scanner_back: Callable[[], None] = lambda: None,
        say: Callable[[str], None],
        before_poll: Callable[[Iterable[tuple[str, Observation]]], None] = lambda _: None,
        exit_code: Callable[[str], int | None] = lambda _: None,
        interval: float = POLL_SECONDS,
        idle_interval: float = IDLE_SECONDS,
    ) -> None:
        self.bottle_id = bottle_id
        self.names = {"scanner": scanner, "proxy": proxy}
        self.inspect = inspect
        self.restore_proxy = restore_proxy
        self.scanner_back = scanner_back
        self._say = say
        self.before_poll = before_poll
        self.exit_code = exit_code
        self.interval = interval
        self.idle_interval = idle_interval
        self._wake = threading.Event()
        self.components: dict[str, Component] = {}
        self.last: dict[str, Observation] = {}
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    TITLES = {"scanner": "the scanner (pipelock)", "proxy": "the egress proxy"}

    def say(self, message: str) -> None:
        # Once teardown has begun, a restore cut short by it is not news.
        if not self.stopping.is_set():
            self._say(message)

    def start(self) -> None:
        """Begin watching; the first look runs in the watcher's thread, off the agent's start."""
        self._thread = threading.Thread(target=self._run, name="bottle-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            first = self.inspect(list(self.names.values()))
        except Exception as e:  # never a traceback; without a first look there is nothing to compare
            if not self.stopping.is_set():
                self.say(f"warning: cannot watch {self.bottle_id}'s scanner and proxy: {e}")
            return
        for role, name in self.names.items():
            self.components[role] = Component(role, first.get(name, GONE), needs_health=role == "scanner")
        self._loop()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look now (the engine reported a death)."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            down = any(not c.up for c in self.components.values())
            self._wake.wait(self.interval if down else self.idle_interval)
            self._wake.clear()
            if self.stopping.is_set():
                return
            try:
                self.poll()
            except Exception as e:  # the watcher must never take the bottle down with a traceback
                if not self.stopping.is_set():
                    self.say(f"warning: watching {self.bottle_id} failed once: {e}")

    def poll(self) -> None:
        names = list(self.names.values())
        self.before_poll((name, self.last[name]) for name in names if name in self.last)
        self.last = self.inspect(names)
        for role, name in self.names.items():
            if self.stopping.is_set():
                return
            component = self.components[role]
            for event in component.observe(self.last.get(name, GONE)):
                self._on(role, component, event)

    def _on(self, role: str, component: Component, event: Event) -> None:
        title = self.TITLES[role]
        if event.kind == "died":
            # A container the engine already restarted reports exit code 0: ask its events.
            exit_code = event.exit_code if event.exit_code is not None else self.exit_code(self.names[role])
            code = "unknown exit code" if exit_code is None else f"exit code {exit_code}"
            blocked = ("egress is blocked until it is back" if role == "scanner"
                       else "the agent has no way out until it is back")
            self.say(f"{title} of {self.bottle_id} died ({code}); {blocked}")
        elif event.kind == "gone":
            self.say(f"{title} of {self.bottle_id} was removed; egress stays blocked")
        elif event.kind == "ready":
            try:
                if role == "proxy":
                    self.restore_proxy()
                else:
                    self.scanner_back()
            except StopBottle:
                self.stopping.set()
                return
            except Exception as e:
                self.say(f"{title} of {self.bottle_id} runs again but could not be given back its "
                         f"policy: {e}; egress stays blocked, retrying")
                component.retry()
                self.stopping.wait(RETRY_SECONDS)
                return
            component.back()
            self.say(f"{title} of {self.bottle_id} is back; egress resumes")
