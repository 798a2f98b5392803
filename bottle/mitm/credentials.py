"""Credentials: the agent holds placeholders, the proxy swaps in the real value on a route
and scrubs it out of what comes back. Pure functions over plain data."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence

from bottle.mitm.decide import ALLOW, Verdict, block
from bottle.mitm.policy import Policy, Route, host_matches, method_matches, path_matches


class CredentialMissingError(Exception):
    pass


def find_route(policy: Policy, host: str, method: str, path: str) -> Route | None:
    for route in policy.routes:
        if host_matches(route.host, host) and method_matches(route.methods, method) and path_matches(route.paths, path):
            return route
    return None


def check_credentials(
    policy: Policy,
    route: Route | None,
    scheme: str,
    headers: Iterable[tuple[str, str]],
    url: str,
) -> Verdict:
    """Placeholders only travel to their own route; routed requests carry only the placeholder."""
    headers = list(headers)
    for ref, placeholder in policy.placeholders.items():
        if route is not None and ref == route.token_ref:
            continue
        if placeholder in url or any(placeholder in v for _, v in headers):
            home = next(r.id for r in policy.routes if r.token_ref == ref)
            return block(403, f"credential placeholder for {ref} sent outside its route {home}", home)
    if route is None:
        return ALLOW
    if scheme != "https":
        return block(403, f"credential route {route.id} requires https", route.id)
    name = route.header_name
    placeholder = policy.placeholders[route.token_ref]
    for key, value in headers:
        if key.lower() == name and not _carries_placeholder(value, placeholder):
            return block(
                403,
                f"{name} header on credential route {route.id} is not bottle's placeholder for {route.token_ref}",
                route.id,
            )
    return ALLOW


def _carries_placeholder(value: str, placeholder: str) -> bool:
    parts = value.strip().split()
    if not parts:
        return False
    if parts[-1] == placeholder and len(parts) <= 2:
        return True
    if len(parts) == 2 and parts[0].lower() == "basic":
        try:
            decoded = base64.b64decode(parts[1], validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return False
        return placeholder in decoded.split(":")
    return False


def credential_header(route: Route, env: Mapping[str, str]) -> tuple[str, str]:
    """The header bottle injects; raises CredentialMissingError naming only the variable."""
    value = env.get(route.token_ref, "")
    if not value:
        raise CredentialMissingError(f"credential {route.token_ref} not provided")
    if route.scheme == "bearer":
        return "authorization", f"Bearer {value}"
    if route.scheme == "token":
        return "authorization", f"token {value}"
    if route.scheme == "basic":
        raw = f"{route.username}:{value}" if route.username is not None else value
        return "authorization", "Basic " + base64.b64encode(raw.encode()).decode("ascii")
    return route.header_name, value


def credential_scrubs(route: Route, placeholder: str, env: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """(real, placeholder) pairs an answer to a credentialed request must not carry back.

    An upstream that reflects request headers (debug endpoints, error pages) would otherwise
    hand the agent the real credential: the value itself, and for `basic` the base64 form
    that was sent.
    """
    _, sent = credential_header(route, env)
    pairs = [(env[route.token_ref].encode(), placeholder.encode())]
    if route.scheme == "basic":
        pairs.append((sent.split(" ", 1)[1].encode(), placeholder.encode()))
    return pairs


class Scrubber:
    """Replace secrets in a stream of chunks; a secret split across chunks is still caught.

    The last len(longest secret)-1 bytes are held back until the next chunk (or the final
    b"") shows whether they start a secret.
    """

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        longest_first = sorted({real for real, _ in pairs}, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(real) for real in longest_first))
        self._placeholders = dict(pairs)
        self._keep = len(longest_first[0]) - 1
        self._carry = b""
        self.count = 0

    def replace(self, data: bytes) -> bytes:
        """Scrub one complete value (a header, the end of a stream)."""
        out, end = self._replace_before(data, len(data))
        return out + data[end:]

    def feed(self, chunk: bytes) -> bytes:
        """Scrubbed bytes safe to send now; b"" flushes what was held back."""
        data, self._carry = self._carry + chunk, b""
        if not chunk:
            return self.replace(data)
        # Every secret starting before `limit` ends inside `data`, so the longest one there
        # is known; a match starting later waits for the next chunk.
        limit = max(0, len(data) - self._keep)
        out, end = self._replace_before(data, limit)
        cut = max(end, limit)
        self._carry = data[cut:]
        return out + data[end:cut]

    def _replace_before(self, data: bytes, limit: int) -> tuple[bytes, int]:
        parts, end = [], 0
        for match in self._pattern.finditer(data):
            if match.start() >= limit:
                break
            parts += [data[end:match.start()], self._placeholders[match.group()]]
            end = match.end()
            self.count += 1
        return b"".join(parts), end
