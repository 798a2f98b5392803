"""The request log line's fields, defined once: the proxy writes them (requestlog.py) and the
host reads them (bottle logs, bottle policy suggest/replay). docs/log-format.md describes them.

Standard library only: this module runs inside the proxy image, and the host imports it.
"""

from __future__ import annotations

from typing import Any

from bottle.mitm import credentials
from bottle.mitm.policy import Policy
from bottle.mitm.redact import loggable_header_name, loggable_path

# Version of the request line's fields; readers refuse lines newer than they know.
# 2 added log_format, headers, placeholders, scan and answer_scanner.
LOG_FORMAT = 2
SCAN_COVERAGE = ("none", "headers", "full")  # what the scanner saw, least first
# Query values are redacted, except git's own service names: replay needs them to tell a
# clone from a push, and they are one of two fixed words, never the agent's data.
_GIT_SERVICES = ("service=git-upload-pack", "service=git-receive-pack")


def placeholder_locations(policy: Policy, url: str, headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """token_ref → where the request carried its placeholder: `url`, a header's name when
    the header's value is the credential itself, `<name>:partial` when it is inside more."""
    found: dict[str, list[str]] = {}
    for ref, placeholder in sorted(policy.placeholders.items()):
        where = ["url"] if placeholder in url else []
        for name, value in headers:
            # The same test the credential check applies to a route's own header.
            if credentials._carries_placeholder(value, placeholder):
                where.append(loggable_header_name(name))
            elif placeholder in value:
                where.append(f"{loggable_header_name(name)}:partial")
        if where:
            found[ref] = sorted(set(where))
    return found


def logged_path(path: str) -> str:
    shown = loggable_path(path)
    for service in _GIT_SERVICES:
        if service in path.split("?", 1)[-1].split("&"):
            shown = shown.replace("service=REDACTED", service, 1)
    return shown


def log_line(**fields: Any) -> dict[str, Any]:
    """A request line with every key, in the documented order."""
    line = {"log_format": LOG_FORMAT, "time": None, "bottle": None, "client": None, "method": None, "scheme": None,
            "host": None, "port": None, "path": "", "status": 0, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0,
            "decision": "allow", "rule": None, "reason": "", "scanner": [], "answer_scanner": [], "token_ref": None,
            "scrubbed": 0, "headers": [], "placeholders": {}, "scan": "none"}
    unknown = set(fields) - set(line)
    if unknown:
        raise KeyError(f"not a log field: {', '.join(sorted(unknown))}")
    line.update(fields)
    return line


