"""`bottle doctor`: can this host build and run bottles, and if not, what to do about it.

Each check gives a status, a one-line finding and, when not ok, the fix. The engine's own
checks live with the engine (bottle/backend/docker/doctor.py); this module holds the
result type, the exit rule and both renderings. `--format json` is versioned like the
dry-run (docs/doctor-json.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

# 1: first version (docs/doctor-json.md).
DOCTOR_SCHEMA_VERSION = 1

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)
_MARK = {OK: "[ok]  ", WARN: "[warn]", FAIL: "[FAIL]", SKIP: "[skip]"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One finding. `fail`: bottle start cannot run (or would run weaker than its plan says);
    `warn`: it runs, but something is worth fixing; `skip`: not checked, `finding` says why."""

    id: str
    title: str
    status: str
    finding: str
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    engine: str | None
    """What answered, e.g. `Docker 26.1.5`, or None when no engine did."""
    client: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """Everything `bottle start` needs is in place (warnings allowed)."""
        return not any(c.status == FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": DOCTOR_SCHEMA_VERSION,
            "ok": self.ok,
            "engine": self.engine,
            "client": self.client,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


def diagnose(engine: str | None, env: Mapping[str, str]) -> Report:
    """Run every check against the engine asked for (`--engine`, $BOTTLE_ENGINE) or found."""
    from bottle.backend.docker.doctor import diagnose_engine

    return diagnose_engine(engine, env)


def split_tip(message: str) -> tuple[str, str | None]:
    """A BottleError's message and its `Tip:` apart."""
    finding, _, tip = message.partition("\nTip: ")
    return finding.strip(), tip.strip() or None


def render_text(report: Report) -> str:
    width = max((len(c.title) for c in report.checks), default=0)
    lines = [f"bottle doctor: {report.engine or 'no engine answered'}"
             + (f" (client {report.client})" if report.client else ""), ""]
    for check in report.checks:
        finding = check.finding.replace("\n", "\n" + " " * (width + 10))
        lines.append(f"{_MARK[check.status]} {check.title:<{width}}  {finding}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<{width + 9}}fix: {check.fix}")
    lines += ["", summary(report.checks)]
    return "\n".join(lines) + "\n"


def summary(checks: Sequence[Check]) -> str:
    counts = {status: sum(c.status == status for c in checks) for status in STATUSES}

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'s' if n != 1 else ''}"

    extra = []
    if counts[WARN]:
        extra.append(plural(counts[WARN], "warning"))
    if counts[SKIP]:
        extra.append(f"{counts[SKIP]} not checked")
    tail = f" ({', '.join(extra)})" if extra else ""
    if counts[FAIL]:
        return f"{plural(counts[FAIL], 'problem')} to fix before `bottle start` can run{tail}."
    return f"Everything `bottle start` needs is in place{tail}."
