"""What of a request may appear in the log and in refusal reasons: never a secret.

The agent chooses the method, the path and the host name; any of them can carry a secret
(and a scanned-and-blocked request usually does). The log keeps what is useful for people
and for `bottle policy suggest` (standard methods, path structure, query keys) and redacts
the rest: non-standard methods, every query value and bare query part, and path segments
or host labels that look like tokens rather than names.
"""

from __future__ import annotations

import math
import re
from collections import Counter

REDACTED = "REDACTED"
# Methods a log may show as they are; anything else is the agent's free text.
KNOWN_METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "WS",
})
_QUERY_KEY = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,40}")


def shannon_entropy(text: str) -> float:
    """Bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


_RUN_SEPARATORS = re.compile(r"[-_.~]")


def looks_like_token(text: str) -> bool:
    """A value that reads like a key, a hash or encoded data rather than a name: a run of
    16+ characters between separators that mixes letters with digits or is high in
    entropy (`my-long-branch-name` and a UUID are names; `AKIA…`, `ghp_…`, a SHA are not)."""
    for run in _RUN_SEPARATORS.split(text):
        if len(run) < 16:
            continue
        if (any(c.isdigit() for c in run) and any(c.isalpha() for c in run)) or shannon_entropy(run) >= 3.5:
            return True
    return False


def loggable_method(method: str) -> str:
    return method if method.upper() in KNOWN_METHODS else REDACTED


def loggable_path(path: str) -> str:
    """Path segments that look like tokens and every query value become REDACTED."""
    base, sep, query = path.partition("?")
    segments = [REDACTED if looks_like_token(s) else s for s in base.split("/")]
    out = "/".join(segments)
    if sep:
        parts = []
        for part in query.split("&"):
            key, eq, _ = part.partition("=")
            parts.append(f"{key}={REDACTED}" if eq and _QUERY_KEY.fullmatch(key) else REDACTED)
        out += "?" + "&".join(parts)
    return out


def loggable_header_name(name: str) -> str:
    name = name.lower()
    return REDACTED if looks_like_token(name) or any(c.isspace() for c in name) else name


def loggable_host(host: str) -> str:
    return ".".join(REDACTED if looks_like_token(label) else label for label in host.split("."))
