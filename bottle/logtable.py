"""`bottle logs`: the egress log as a table for people (the JSON stays the machine format)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import click

from bottle.egresslog import CAPTURE_DROP, Entry
from bottle.mitm.policy import host_matches

COLUMNS = ("TIME", "DECISION", "STATUS", "METHOD", "HOST", "PATH", "RULE")
# Widths a followed log starts with (rows already written can widen them); longer cells
# are cut with an ellipsis so rows written later stay aligned.
FOLLOW_WIDTHS = (12, 11, 6, 7, 30, 48, 16)
MAX_WIDTHS = (12, 11, 6, 7, 48, 72, 40)
COLOURS = {"allow": "green", "block": "red", "would_block": "yellow"}


@dataclasses.dataclass(frozen=True)
class Filters:
    blocked: bool = False  # block and would_block only
    host: str | None = None  # exact host or *.suffix

    def keep(self, entry: Entry) -> bool:
        if entry.kind not in ("request", "dns", "event"):
            return False
        if self.blocked and entry.get("decision") not in ("block", "would_block"):
            return False
        if self.host is not None:
            host = entry.get("host") if entry.kind == "request" else (entry.get("qname") or "").rstrip(".")
            return bool(host) and host_matches(self.host, host)
        return True


def cells(entry: Entry) -> tuple[list[str], str]:
    """The row's cells and its trailing reason."""
    d = entry.data
    clock = str(d.get("time") or "")[11:23]
    if entry.kind == "dns":
        return [clock, d.get("decision", ""), "-", "DNS", str(d.get("qname") or "?"), f"type {d.get('qtype')}", "-"], \
            d.get("reason", "")
    if entry.kind == "event" and d.get("event") == CAPTURE_DROP:
        where = str(d.get("address")) + (f":{d['port']}" if d.get("port") is not None else "")
        return [clock, d.get("decision", ""), "-", str(d.get("protocol", "")).upper(), where,
                f"({d.get('packets')} packets, rejected by the capture)", "-"], d.get("reason", "")
    if entry.kind == "event" and d.get("event") == "policy_reload":
        sha = str(d.get("policy_sha256") or "")
        return [clock, d.get("decision", ""), "-", "RELOAD", "(policy)", f"sha256 {sha[:12]}" if sha else "", "-"], \
            d.get("reason", "")
    if entry.kind == "event":
        return [clock, d.get("decision", ""), "-", "EVENT", str(d.get("event")), "", "-"], d.get("reason", "")
    default_port = {"https": 443, "http": 80}.get(str(d.get("scheme")), 443)
    host = d["host"] if d["port"] == default_port else f"{d['host']}:{d['port']}"
    path = d["path"]
    if entry.is_passthrough:
        path = "(TLS passthrough: not decrypted, not scanned)"
    elif entry.is_message:
        path = f"{path} (websocket message)"
    reason = d["reason"]
    if d.get("token_ref") and d["decision"] != "block":
        reason = (reason + "; " if reason else "") + f"credential {d['token_ref']} injected"
    return [clock, d["decision"], str(d["status"]), d["method"], host, path, d.get("rule") or "-"], reason


class Table:
    """Aligned rows; decisions coloured (click drops the colour when stdout is no terminal)."""

    def __init__(self, widths: Iterable[int] = tuple(len(c) for c in COLUMNS)) -> None:
        self.widths = list(widths)

    def fit(self, entries: Iterable[Entry]) -> Table:
        for entry in entries:
            for i, cell in enumerate(cells(entry)[0]):
                self.widths[i] = min(MAX_WIDTHS[i], max(self.widths[i], len(cell)))
        return self

    def header(self) -> str:
        return self._join(list(COLUMNS), "REASON", colour=None)

    def row(self, entry: Entry) -> str:
        row, reason = cells(entry)
        return self._join(row, reason, colour=COLOURS.get(row[1]))

    def _join(self, row: list[str], reason: str, colour: str | None) -> str:
        parts = []
        for i, cell in enumerate(row):
            width = self.widths[i]
            cell = cell if len(cell) <= width else cell[: width - 1] + "…"
            padded = cell.ljust(width)
            parts.append(click.style(padded, fg=colour, bold=row[1] == "block") if i == 1 and colour else padded)
        return ("  ".join(parts) + "  " + reason).rstrip()
