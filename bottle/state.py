"""Where a bottle's run is recorded: one small JSON file per bottle, for `ps`, `stop`, `wait`,
`exec` and `logs --agent` (docs/prds/0012-operating-bottles.md).

`$XDG_STATE_HOME/bottle/bottles/<bottle id>.json` (default ~/.local/state/bottle/bottles) holds
what the run is (id, name, manifest, backend and engine, agent command, log paths, the
credentials' token_refs: never a value), who runs it (the supervising process: host, pid and
the pid's start time, so a reused pid is not taken for it) and how it went (starting,
running, exited with a code, failed with the error). Every write is atomic (a temporary file
renamed over the old one), so a reader sees the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bottle.errors import BottleError

STATE_VERSION = 1
STARTING, RUNNING, EXITED, FAILED = "starting", "running", "exited", "failed"
FINAL = (EXITED, FAILED)


def state_home(env: Mapping[str, str]) -> Path:
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "bottle"


def bottles_dir(env: Mapping[str, str]) -> Path:
    return state_home(env) / "bottles"


def state_path(directory: Path, bottle_id: str) -> Path:
    return directory / f"{bottle_id}.json"


def agent_output_path(directory: Path, bottle_id: str) -> Path:
    """The agent's own output (stdout and stderr) of a detached bottle."""
    return directory / f"{bottle_id}.agent.log"


def supervisor_log_path(directory: Path, bottle_id: str) -> Path:
    """What a detached bottle's supervisor says (what `bottle start` prints on stderr)."""
    return directory / f"{bottle_id}.supervisor.log"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- the supervising process ------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_time": process_start_time(pid)}


def process_alive(process: Mapping[str, Any] | None) -> bool:
    """Whether the recorded process still runs: same host, the pid exists and is no zombie,
    and (where /proc tells) it is the same process, not a later one given the same pid."""
    if not process or process.get("host") != socket.gethostname() or not isinstance(process.get("pid"), int):
        return False
    pid = process["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):
        return False
    recorded = process.get("start_time")
    return recorded is None or process_start_time(pid) in (None, recorded)


# -- records ----------------------------------------------------------------------------


def new_record(*, bottle_id: str, name: str, manifest: str, backend: str, engine: str | None,
               command: Iterable[str], egress_log: Path, agent_output: Path | None, detached: bool,
               token_refs: Iterable[str]) -> dict[str, Any]:
    """A bottle's record as it starts. Credentials appear as the agent's variable and the
    token_ref naming the real value in bottle's environment; the values never appear."""
    return {
        "version": STATE_VERSION,
        "id": bottle_id,
        "name": name,
        "manifest": manifest,
        "backend": backend,
        "engine": engine,
        "detached": detached,
        "supervisor": this_process(),
        "created": now(),
        "command": list(command),
        "egress_log": str(egress_log),
        "agent_output": str(agent_output) if agent_output else None,
        # The agent's variable holds a placeholder; the proxy swaps in the value of token_ref.
        "credentials": [{"agent_env": ref, "token_ref": ref} for ref in token_refs],
        "state": STARTING,
        "exit_code": None,
        "error": None,
        "ended": None,
    }


def write(directory: Path, record: Mapping[str, Any]) -> Path:
    """Write `record` atomically: readers see the previous version or this one."""
    return write_json(state_path(directory, record["id"]), record)


def write_json(path: Path, document: Any) -> Path:
    """Write `document` to `path` atomically, mode 0600, in a directory only its owner reads."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def reserve(directory: Path, bottle_id: str) -> bool:
    """Claim `bottle_id` in this state directory; False if a bottle already has it."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(state_path(directory, bottle_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def read(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when it is not (yet) a record (a reserved id, a foreign file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not isinstance(data.get("version"), int):
        return None
    return data


def load_all(directory: Path) -> list[dict[str, Any]]:
    """Every record in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    # Only `<id>.json` is a record: `<id>.reload.json` and the like live beside it.
    records = [r for p in directory.glob("*.json") if (r := read(p)) is not None and r["id"] == p.stem]
    return sorted(records, key=lambda r: (r.get("created") or "", r["id"]))


def update(directory: Path, bottle_id: str, **changes: Any) -> dict[str, Any] | None:
    record = read(state_path(directory, bottle_id))
    if record is None:
        return None
    record.update(changes)
    write(directory, record)
    return record


# -- naming a bottle ----------------------------------------------------------------------


def resolve(ident: str, records: Iterable[Mapping[str, Any]], directory: Path | None = None) -> dict[str, Any]:
    """The one bottle `ident` names: its id, a unique start of it (with or without `bottle-`),
    or its name when exactly one bottle has that name. Ambiguity is an error listing the matches."""
    records = list(records)
    where = f" in {directory}" if directory is not None else ""
    if not ident:
        raise BottleError("no bottle named ''")
    for r in records:
        if r["id"] == ident:
            return dict(r)
    by_name = [r for r in records if r.get("name") == ident]
    by_prefix = [r for r in records if r["id"].startswith(ident) or r["id"].startswith(f"bottle-{ident}")]
    # A name chooses when it is unique; several bottles of one name ask for the id.
    matches = by_name if len(by_name) == 1 else (by_name or by_prefix)
    if len(matches) == 1:
        return dict(matches[0])
    if not matches:
        raise BottleError(f"no bottle {ident!r}{where}",
                          tip="`bottle ps -a` lists the bottles by id and name")
    listed = "\n".join(f"  {r['id']}  ({r.get('state')}, created {r.get('created')})" for r in matches)
    raise BottleError(f"{ident!r} matches {len(matches)} bottles; give more of the id:\n{listed}")


def valid_id(value: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9-]*", value) is not None
