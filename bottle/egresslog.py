"""The egress proxy's request log on the host: find it, read it strictly, follow it, sum it up.

The line format is the proxy's (bottle/mitm/logformat.py, docs/log-format.md). Every tool
that reads a log (`bottle logs`, `bottle policy suggest|replay`, the summary at the end of
`bottle start`) reads it here, so a corrupt line, a truncated one or one from a newer bottle
gets the same error everywhere: the file, the line, what is wrong.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bottle.errors import LogError
from bottle.mitm.logformat import LOG_FORMAT, SCAN_COVERAGE

DECISIONS = ("allow", "block", "would_block")
CAPTURE_DROP = "capture_drop"  # an event line: what transparent capture rejected (bottle/launch/capture.py)
_ABSENT = object()
# Fields a request line must have, with their JSON types, for any tool to use it.
_REQUEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "method": str, "host": str, "port": int, "path": str, "status": int, "decision": str,
    "rule": (str, type(None)), "reason": str,
}
_FORMAT_2_FIELDS: dict[str, type | tuple[type, ...]] = {**_REQUEST_FIELDS, "headers": list, "placeholders": dict,
                                                         "scan": str}


def logs_dir(env: Mapping[str, str]) -> Path:
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "bottle" / "logs"


def default_log_path(bottle_id: str, env: Mapping[str, str]) -> Path:
    return logs_dir(env) / f"{bottle_id}.jsonl"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One line of a log: where it is, its text and its fields."""

    file: Path
    line: int
    raw: str
    data: Mapping[str, Any]

    @property
    def kind(self) -> str:
        """request, dns, event, or other (a line some newer proxy wrote)."""
        if "method" in self.data:
            return "request"
        if "qname" in self.data:
            return "dns"
        return "event" if "event" in self.data else "other"

    @property
    def is_message(self) -> bool:
        """A WebSocket message line (not a request of its own)."""
        return self.data.get("method") == "WS"

    @property
    def is_passthrough(self) -> bool:
        """An allowed CONNECT is logged only for a TLS passthrough tunnel."""
        return self.data.get("method") == "CONNECT" and self.data.get("decision") != "block"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def parse_line(raw: str, file: Path, number: int, *, last: bool = False) -> Entry | None:
    """One line as an Entry (None for a blank line); LogError naming file:line otherwise."""
    text = raw.strip()
    if not text:
        return None
    where = f"{file}:{number}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        truncated = last and not raw.endswith("\n")
        detail = "the line is cut off (was the log copied while it was written?)" if truncated else \
            f"{e.msg} at column {e.colno}"
        raise LogError(f"{where}: not a JSON log line: {detail}") from None
    if not isinstance(data, dict):
        raise LogError(f"{where}: expected a JSON object per line, found {type(data).__name__}")
    version = data.get("log_format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LogError(f"{where}: log_format must be a positive integer, found {version!r}")
    if version > LOG_FORMAT:
        raise LogError(f"{where}: written in log format {version}, newer than this bottle reads "
                       f"(up to {LOG_FORMAT})", tip="upgrade bottle to read this log")
    entry = Entry(file=file, line=number, raw=text, data=data)
    if entry.kind == "request":
        _check_request(entry, version)
    return entry


def _check_request(entry: Entry, version: int) -> None:
    data = entry.data
    for key, kind in (_FORMAT_2_FIELDS if version >= 2 else _REQUEST_FIELDS).items():
        value = data.get(key, _ABSENT)
        if not isinstance(value, kind) or value is True or value is False:
            found = "nothing" if value is _ABSENT else json.dumps(value)
            raise LogError(f"{entry.where}: a request line needs {key!r} "
                           f"({_type_name(kind)}); found {found}")
    if entry["decision"] not in DECISIONS:
        raise LogError(f"{entry.where}: decision must be one of {', '.join(DECISIONS)}, found {entry['decision']!r}")
    if version >= 2 and entry["scan"] not in SCAN_COVERAGE:
        raise LogError(f"{entry.where}: scan must be one of {', '.join(SCAN_COVERAGE)}, found {entry['scan']!r}")


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names[k] for k in kinds)


def read_log(path: Path) -> list[Entry]:
    """Every entry of one log file, in order."""
    return list(iter_log(path))


def iter_log(path: Path) -> Iterator[Entry]:
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise LogError(f"{path}: no such log file") from None
    except IsADirectoryError:
        raise LogError(f"{path}: is a directory, expected a log file (.jsonl)") from None
    except OSError as e:
        raise LogError(f"{path}: cannot be read: {e.strerror}") from None
    with handle:
        for number, chunk in enumerate(handle, 1):
            if not chunk.strip():
                continue
            try:
                raw = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LogError(f"{path}:{number}: not UTF-8 text (byte {e.start})") from None
            entry = parse_line(raw, path, number, last=not raw.endswith("\n"))
            if entry is not None:
                yield entry


def read_logs(paths: Iterable[Path]) -> list[Entry]:
    return [entry for path in paths for entry in read_log(path)]


def requests(entries: Iterable[Entry]) -> list[Entry]:
    """Request lines (CONNECT and passthrough lines included, WebSocket messages not)."""
    return [e for e in entries if e.kind == "request" and not e.is_message]


# -- finding a bottle's log ------------------------------------------------------------


def resolve_log(name: str, env: Mapping[str, str]) -> tuple[Path, list[Path]]:
    """A log file by path, bottle id, or the start of one (`claude`, `bottle-claude-…`): the
    newest match, and every match."""
    given = Path(name)
    if given.is_file():
        return given, [given]
    directory = logs_dir(env)
    candidates = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    stem = name.removesuffix(".jsonl")
    exact = [p for p in candidates if p.stem in (stem, f"bottle-{stem}")]
    matches = exact or [p for p in candidates if p.stem.startswith((stem, f"bottle-{stem}"))]
    if not matches:
        raise LogError(f"no log for {name!r}: it is not a file, and no log in {directory} is named like it",
                       tip=f"pass the log's path, or a bottle id from `ls {directory}`")
    newest = max(matches, key=lambda p: (p.stat().st_mtime, p.name))
    return newest, matches


# -- the writer's lock: `bottle logs -f` follows while `bottle start` runs -------------


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Held by `bottle start` for as long as it may write the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def being_written(path: Path) -> bool:
    try:
        handle = open(path, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def follow(path: Path, on_entry: Callable[[Entry], None], *, active: Callable[[], bool] | None = None,
           poll: float = 0.2) -> None:
    """Hand every entry to on_entry as it is written, until the writer is done.

    The proxy's log is rewritten whole when the bottle stops (nothing logged at the very
    end may be lost), so a file shorter than what was read is waited for, not re-read."""
    number, pending = 0, b""

    def take(chunk: bytes) -> None:
        nonlocal number, pending
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            _hand(raw + b"\n", path, number, on_entry)

    follow_bytes(path, take, active=active or (lambda: being_written(path)), poll=poll)
    if pending.strip():
        _hand(pending, path, number + 1, on_entry, last=True)


def follow_bytes(path: Path, write: Callable[[bytes], None], *, active: Callable[[], bool],
                 poll: float = 0.2) -> None:
    """Write the file's content and then whatever is appended, until `active()` is False and
    nothing more came. A file that shrank is waited for (read on from the same offset)."""
    offset = 0
    while True:
        running = active()  # asked before reading, so nothing written before it ended is missed
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            write(chunk)
        elif not running:
            return
        else:
            time.sleep(poll)


def _hand(raw: bytes, path: Path, number: int, on_entry: Callable[[Entry], None], *, last: bool = False) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LogError(f"{path}:{number}: not UTF-8 text (byte {e.start})") from None
    entry = parse_line(text, path, number, last=last)
    if entry is not None:
        on_entry(entry)


# -- the line at the end of `bottle start` --------------------------------------------------


def summary(entries: Iterable[Entry], path: Path, *, top: int = 3) -> str:
    entries = list(entries)
    lines = requests(entries)
    decisions = collections.Counter(e["decision"] for e in lines)
    blocked = collections.Counter(e["host"].lower() for e in lines if e["decision"] == "block")
    text = (f"bottle: {len(lines)} request{'s' if len(lines) != 1 else ''}, {decisions['block']} blocked, "
            f"{decisions['would_block']} would_block")
    if blocked:
        ranked = sorted(blocked.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        text += " (most blocked: " + ", ".join(f"{host} ×{n}" for host, n in ranked) + ")"
    drops = [e for e in entries if e.kind == "event" and e.get("event") == CAPTURE_DROP]
    if drops:
        packets = sum(int(e.get("packets") or 0) for e in drops)
        text += (f"; the capture rejected {packets} packet{'s' if packets != 1 else ''} to {len(drops)} "
                 f"destination{'s' if len(drops) != 1 else ''}")
    return f"{text}; log: {path}"
