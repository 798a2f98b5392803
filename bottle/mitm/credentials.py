"""Credentials: the agent holds placeholders, the proxy swaps in the real value on a route
and scrubs it out of what comes back. Pure functions over plain data."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from bottle.mitm.decide import ALLOW, Verdict, block
from bottle.mitm.policy import Policy, Route, host_matches, method_matches, path_matches

if TYPE_CHECKING:
    from bottle.mitm.state import FlowState


class CredentialMissingError(Exception):
    pass


def find_route(policy: Policy, host: str, method: str, path: str) -> Route | None:
    for route in policy.routes:
        if host_matches(route.host, host) and method_matches(route.methods, method) and path_matches(route.paths, path):
            return route
    return None


def off_route_placeholders(policy: Policy, route: Route | None) -> dict[str, str]:
    """token_ref -> placeholder for every placeholder that must not travel on this request."""
    return {ref: p for ref, p in policy.placeholders.items() if route is None or ref != route.token_ref}


def _off_route(policy: Policy, ref: str) -> Verdict:
    home = next(r.id for r in policy.routes if r.token_ref == ref)
    return block(403, f"credential placeholder for {ref} sent outside its route {home}", home)


def check_placeholders_in(policy: Policy, route: Route | None, texts: Iterable[str]) -> Verdict:
    """No placeholder of another route anywhere in these texts (a body's raw and parsed forms)."""
    texts = list(texts)
    for ref, placeholder in off_route_placeholders(policy, route).items():
        if any(placeholder in text for text in texts):
            return _off_route(policy, ref)
    return ALLOW


def check_credentials(
    policy: Policy,
    route: Route | None,
    scheme: str,
    headers: Iterable[tuple[str, str]],
    url: str,
) -> Verdict:
    """Placeholders only travel to their own route; routed requests carry only the placeholder."""
    headers = list(headers)
    url_forms = (url, unquote_to_bytes(url).decode("utf-8", "replace"))
    texts = [*url_forms, *(f"{k}: {v}" for k, v in headers)]
    if not (verdict := check_placeholders_in(policy, route, texts)).allowed:
        return verdict
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


class PlaceholderGuard:
    """Watches a streamed body for placeholders that must not travel on it.

    Bytes go on only once it is certain no placeholder starts in them (like Scrubber, the
    last len(longest)-1 bytes wait for the next chunk). On a find, nothing more is sent and
    `found` names the token_ref; the flow is then cut off.
    """

    def __init__(self, placeholders: Mapping[str, str]) -> None:
        self._by_bytes = {p.encode(): ref for ref, p in placeholders.items()}
        longest = max((len(p) for p in self._by_bytes), default=0)
        self._pattern = re.compile(b"|".join(re.escape(p) for p in self._by_bytes)) if self._by_bytes else None
        self._keep = max(longest - 1, 0)
        self._carry = b""
        self.found: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        """What may be sent now; b"" at the end flushes what was held back."""
        if self.found is not None:
            return b""
        if self._pattern is None:
            return chunk
        data, self._carry = self._carry + chunk, b""
        if (match := self._pattern.search(data)) is not None:
            self.found = self._by_bytes[match.group()]
            return b""
        if not chunk:
            return data
        cut = max(0, len(data) - self._keep)
        self._carry = data[cut:]
        return data[:cut]


def guarded_stream(st: FlowState, policy: Policy) -> Callable[[bytes], list[bytes]]:
    """The stream function of a body that is not scanned: counted, and cut off at the first
    placeholder of another route."""
    guard = PlaceholderGuard(off_route_placeholders(policy, st.route))

    # A list, never b"": an empty chunk in a chunked body is its terminator.
    def stream(chunk: bytes) -> list[bytes]:
        st.bytes_up += len(chunk)
        out = guard.feed(chunk)
        if guard.found is not None and not st.blocked:
            verdict = _off_route(policy, guard.found)
            st.decision, st.rule, st.reason, st.blocked = "block", verdict.rule_id, verdict.reason, True
        return [out] if out else []

    return stream
