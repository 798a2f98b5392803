"""How answers come back to the agent: streamed and counted, scrubbed of the real
credential on credentialed flows, or replaced by a refusal when they cannot be checked."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http.http1 import expected_http_body_size

from bottle.mitm import decide
from bottle.mitm.credentials import Scrubber
from bottle.mitm.state import FlowState, fail_closed, refusal_response


class ResponseFilter:
    """Streams every answer; on a credentialed flow, replaces the real credential with the
    agent's placeholder in headers, body and trailers (a secret split across chunks
    included), and refuses a compressed body it could not check."""

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if flow.response is None or st.blocked:
            return
        resp = flow.response
        if st.scrubber is None:
            resp.stream = _count_down(st)
            return
        has_body = expected_http_body_size(flow.request, resp) != 0
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if has_body and encoding not in ("", "identity"):
            return _refuse_response(flow, decide.block(
                502, "compressed response to a credentialed request cannot be checked for the credential", st.rule))
        codings = [c.strip().lower() for c in resp.headers.get("transfer-encoding", "").split(",") if c.strip()]
        if any(c != "chunked" for c in codings):
            return _refuse_response(flow, decide.block(
                502, f"transfer coding {resp.headers['transfer-encoding']!r} on a credentialed response cannot be "
                     "checked for the credential", st.rule))
        scrubber = st.scrubber
        # Everything of the head an upstream chooses: the reason phrase, header names and values.
        resp.data.reason = scrubber.replace(resp.data.reason)
        resp.headers.fields = tuple((scrubber.replace(name), scrubber.replace(value))
                                    for name, value in resp.headers.fields)
        st.scrubbed = scrubber.count
        if has_body:
            # Scrubbing changes the body's length: an HTTP/1.1 agent gets it chunked, an
            # HTTP/2 one framed by HTTP/2, an HTTP/1.0 exchange ends when the connection closes.
            resp.headers.pop("content-length", None)
            if flow.request.http_version == "HTTP/1.1" and resp.http_version != "HTTP/1.0":
                resp.headers["transfer-encoding"] = "chunked"
            resp.stream = _scrub_stream(st, scrubber)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        if st.refused_response is not None:
            # mitmproxy fills a response that was not streamed with upstream's body.
            flow.response = refusal_response(*st.refused_response)
        elif st.scrubber is not None and flow.response is not None and not st.blocked:
            if flow.response.trailers:
                trailers = flow.response.trailers
                trailers.fields = tuple((st.scrubber.replace(name), st.scrubber.replace(value))
                                        for name, value in trailers.fields)
            st.scrubbed = st.scrubber.count


def _refuse_response(flow: http.HTTPFlow, verdict: decide.Verdict) -> None:
    """Answer with bottle's refusal instead of upstream's response, whose head is in.

    Upstream's body is discarded as it arrives; the refusal goes out with its first chunk
    (or is set again in `response` when nothing was streamed).
    """
    st = FlowState.of(flow)
    st.decision, st.reason, st.blocked = "block", verdict.reason, True
    st.rule = verdict.rule_id or st.rule
    st.refused_response = (verdict.status, verdict.reason, st.rule)
    flow.response = refusal_response(verdict.status, verdict.reason, st.rule)
    pending = [flow.response.raw_content or b""]

    def discard(chunk: bytes) -> list[bytes]:
        out = [c for c in pending if c]
        pending.clear()
        return out

    flow.response.stream = discard


def _count_down(st: FlowState) -> Callable[[bytes], bytes]:
    def count(chunk: bytes) -> bytes:
        st.bytes_down += len(chunk)
        return chunk

    return count


def _scrub_stream(st: FlowState, scrubber: Scrubber) -> Callable[[bytes], list[bytes]]:
    # A list, never b"": an empty chunk in a chunked body is its terminator.
    def scrub(chunk: bytes) -> list[bytes]:
        out = scrubber.feed(chunk)
        st.bytes_down += len(out)
        st.scrubbed = scrubber.count
        return [out] if out else []

    return scrub
