"""Operating bottles: `start -d`'s supervisor, `ps`, `stop`, `wait`, `exec`, `logs --agent`
(docs/prds/0012-operating-bottles.md).

A detached bottle is run by a supervisor: `bottle _supervise`, a process of its own session
that runs the very `run_bottle` a foreground `bottle start` runs (same teardown on every way
out), with the agent's output going to a file. It is the bottle's owner (the `host:pid`
label `bottle cleanup` checks) and it writes the bottle's state file (bottle/state.py).
`bottle start -d` starts it, waits for its word on a pipe ("running" or "failed") and
returns. `stop` is SIGTERM to it, `wait` watches its state file.
"""

from __future__ import annotations

import datetime
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bottle import state
from bottle.errors import BottleError, StartError

PS_JSON_VERSION = 1
# How long `bottle start -d` waits for the supervisor's word, `stop` for a teardown.
START_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0
ROLE_NAMES = {"pipelock": "scanner", "proxy": "proxy", "agent": "agent"}


# -- start -d: the parent's side -------------------------------------------------------------


def start_detached(supervise_argv: Callable[[int], Sequence[str]], *, bottle_id: str, directory: Path,
                   echo_err: Callable[[str], None]) -> None:
    """Start the supervisor (`supervise_argv(fd)`: its argv, told to write its word to fd) and
    return once it says the agent runs; raise with its error when the start fails (everything
    already torn down)."""
    log_path = state.supervisor_log_path(directory, bottle_id)
    read_end, write_end = os.pipe()
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        supervisor = subprocess.Popen(
            list(supervise_argv(write_end)),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
            start_new_session=True,  # no terminal: a closed shell or Ctrl-C here does not reach it
        )
    os.close(write_end)
    try:
        word = _read_word(read_end, supervisor)
    except BaseException:
        # Interrupted while waiting: the supervisor tears down what it made.
        with _suppress():
            supervisor.send_signal(signal.SIGTERM)
        raise
    finally:
        os.close(read_end)
    said = _read_text(log_path)
    if word.startswith("running"):
        for line in said.splitlines():
            echo_err(line)
        return
    if word.startswith("failed"):
        head, _, message = word.partition("\n")
        code = int(head.split()[1]) if len(head.split()) > 1 and head.split()[1].isdigit() else 1
        _wait_exit(supervisor, 30)
        error = BottleError(message.strip() or "the bottle did not start")
        error.exit_code = code
        raise error
    _wait_exit(supervisor, 5)
    tail = "\n".join("  " + line for line in said.splitlines()[-20:])
    raise StartError(f"the supervisor of {bottle_id} ended without starting the bottle "
                     f"(exit code {supervisor.poll()}); it said:\n{tail or '  (nothing)'}")


def _read_word(fd: int, process: subprocess.Popen) -> str:
    data = b""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk
            if data.startswith(b"running"):
                return data.decode(errors="replace")
    raise StartError(f"the bottle did not report running within {START_TIMEOUT:g} s")


def _wait_exit(process: subprocess.Popen, timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (OSError, ProcessLookupError))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- the supervisor ---------------------------------------------------------------------------


class Supervisor:
    """The supervisor's side: its messages to the supervisor log, the agent's output (stdout
    and stderr of the agent command, which inherits fds 1 and 2) to the agent log, and one
    word to the waiting `bottle start -d`."""

    def __init__(self, ready_fd: int, directory: Path, bottle_id: str) -> None:
        self.ready_fd: int | None = ready_fd
        self.directory = directory
        self.bottle_id = bottle_id

    def redirect_output(self) -> Path:
        agent_output = state.agent_output_path(self.directory, self.bottle_id)
        # bottle's own lines keep going where fd 2 goes now (the supervisor log)...
        own = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout = sys.stderr = own
        # ...and whatever the agent command writes goes to its own file.
        fd = os.open(agent_output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return agent_output

    def say(self, word: str) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, word.encode())
        except OSError:
            pass  # the parent was interrupted; the bottle runs on regardless
        finally:
            os.close(self.ready_fd)
            self.ready_fd = None

    def running(self) -> None:
        self.say("running\n")

    def failed(self, error: BaseException) -> None:
        code = getattr(error, "exit_code", 1)
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        self.say(f"failed {code}\n{message}")


# -- what a bottle is now -------------------------------------------------------------------


def live_state(record: Mapping[str, Any], components: Mapping[str, str] | None) -> tuple[str, list[str]]:
    """(state, problems): the recorded state checked against the supervising process and,
    when given, the bottle's containers (role -> status)."""
    recorded = record.get("state")
    if recorded in state.FINAL:
        return recorded, []
    if not state.process_alive(record.get("supervisor")):
        return "dead", []
    problems = []
    if recorded == state.RUNNING and components is not None:
        for role, shown in ROLE_NAMES.items():
            status = components.get(role, "missing")
            if status not in ("running", "healthy"):
                problems.append(f"{shown} {'down' if status in ('exited', 'dead', 'missing') else status}")
    return recorded or "unknown", problems


def state_text(record: Mapping[str, Any], live: str, problems: Sequence[str]) -> str:
    if live == state.EXITED:
        code = record.get("exit_code")
        return f"exited ({code if code is not None else '?'})"
    if live == "dead":
        return "dead (run `bottle cleanup`)"
    return f"{live} ({', '.join(problems)})" if problems else live


def egress_counts(path: str | None) -> tuple[int, int]:
    """(requests, blocked) from an egress log, leniently: the log may be half-written."""
    requests = blocked = 0
    if not path:
        return 0, 0
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(line, dict) or "method" not in line or line.get("method") == "WS":
                    continue
                requests += 1
                blocked += line.get("decision") == "block"
    except OSError:
        pass
    return requests, blocked


def age(created: str | None, now: datetime.datetime | None = None) -> tuple[float | None, str]:
    if not created:
        return None, "?"
    try:
        seconds = ((now or datetime.datetime.now(datetime.timezone.utc)) - state.parse_time(created)).total_seconds()
    except ValueError:
        return None, "?"
    seconds = max(seconds, 0.0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return seconds, f"{int(seconds // size)}{unit}"
    return seconds, f"{int(seconds)}s"


def ps_rows(records: Sequence[Mapping[str, Any]], components: Mapping[str, Mapping[str, str]],
            *, show_all: bool, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """One row per bottle (the `ps --format json` shape, docs/prds/0012-operating-bottles.md)."""
    rows = []
    for record in records:
        seen = components.get(record["id"])
        live, problems = live_state(record, seen)
        if not show_all and live in state.FINAL:
            continue
        requests, blocked = egress_counts(record.get("egress_log"))
        seconds, _ = age(record.get("created"), now)
        supervisor = record.get("supervisor") or {}
        rows.append({
            "id": record["id"],
            "name": record.get("name"),
            "state": live,
            "problems": problems,
            "status": state_text(record, live, problems),
            "exit_code": record.get("exit_code"),
            "error": record.get("error"),
            "created": record.get("created"),
            "age_seconds": None if seconds is None else int(seconds),
            "command": list(record.get("command") or []),
            "requests": requests,
            "blocked": blocked,
            "detached": bool(record.get("detached")),
            "manifest": record.get("manifest"),
            "backend": record.get("backend"),
            "engine": record.get("engine"),
            "supervisor": {"host": supervisor.get("host"), "pid": supervisor.get("pid")},
            "components": {ROLE_NAMES[r]: s for r, s in sorted(seen.items())} if seen is not None else None,
            "egress_log": record.get("egress_log"),
            "agent_output": record.get("agent_output"),
            "credentials": list(record.get("credentials") or []),
        })
    return rows


def ps_document(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"version": PS_JSON_VERSION, "bottles": list(rows)}


def ps_table(rows: Sequence[Mapping[str, Any]], now: datetime.datetime | None = None) -> str:
    header = ("BOTTLE ID", "NAME", "STATE", "AGE", "REQUESTS", "BLOCKED", "COMMAND")
    table = [header]
    for row in rows:
        command = " ".join(row["command"])
        table.append((row["id"], row["name"] or "", row["status"], age(row["created"], now)[1],
                      str(row["requests"]), str(row["blocked"]),
                      command if len(command) <= 40 else command[:39] + "…"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths)), r[-1]]).rstrip() for r in table) + "\n"


# -- stop and wait ------------------------------------------------------------------------------


def signal_supervisor(record: Mapping[str, Any]) -> bool:
    """SIGTERM to the process running the bottle; False if it is not running."""
    supervisor = record.get("supervisor") or {}
    if not state.process_alive(supervisor):
        return False
    try:
        os.kill(supervisor["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait_gone(records: Sequence[Mapping[str, Any]], timeout: float, *, poll: float = 0.1) -> list[dict[str, Any]]:
    """Wait until every record's supervisor has ended; returns those still running at the deadline."""
    pending = [dict(r) for r in records]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [r for r in pending if state.process_alive(r.get("supervisor"))]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(poll)
    return pending


def wait_final(directory: Path, bottle_id: str, *, poll: float = 0.2,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Block until the bottle's record is final (its teardown done), or its supervisor is gone."""
    while True:
        record = state.read(state.state_path(directory, bottle_id))
        if record is None:
            raise BottleError(f"the state of {bottle_id} is gone from {directory}")
        if record.get("state") in state.FINAL:
            return record
        if not state.process_alive(record.get("supervisor")):
            # It may have written its last word just now.
            record = state.read(state.state_path(directory, bottle_id)) or record
            if record.get("state") in state.FINAL:
                return record
            raise BottleError(f"the process running {bottle_id} died without recording how the agent ended",
                              tip=f"`bottle stop {bottle_id}` removes what it left")
        sleep(poll)


# -- logs --agent --------------------------------------------------------------------------------


def still_running(directory: Path, bottle_id: str) -> Callable[[], bool]:
    def active() -> bool:
        record = state.read(state.state_path(directory, bottle_id))
        return (record is not None and record.get("state") not in state.FINAL
                and state.process_alive(record.get("supervisor")))

    return active
