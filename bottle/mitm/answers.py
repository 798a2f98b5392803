"""Text answers are scanned for prompt injection aimed at the agent (pipelock's
`prompt_injection` kind), per `scanner.responses`:

- `warn` (default): the answer streams on untouched; what it carried is scanned as it
  passes (each SSE event as it arrives, other text in batches) and a finding is logged.
- `block`: an SSE stream is cut off at the first finding (an event scanned in flight may
  already have reached the agent); any other text answer is held until it is scanned
  (up to the scan limit, bounded by bottle.mitm.patches) and replaced by a refusal.
- `off`: nothing is scanned.

Scanned: answers whose content type is text, JSON, XML, JavaScript or an event stream,
after undoing gzip, deflate, br or zstd. Not scanned: binary answers, websocket messages
from the server, and text past the scan limit of one answer (logged as truncated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import Callable

from mitmproxy import http

from bottle.mitm.scanner import ScannerUnavailable
from bottle.mitm.state import FlowState, Runtime, fail_closed, refusal_response

BATCH = 64 * 1024
_TEXT_TYPES = ("text/", "application/json", "+json", "application/xml", "+xml", "javascript", "event-stream")


def is_text(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return any(t in mime for t in _TEXT_TYPES)


class _Decoder:
    """Undo one content coding incrementally (scanning only; the bytes go on as they came)."""

    def __init__(self, coding: str) -> None:
        coding = coding.strip().lower()
        self.feed: Callable[[bytes], bytes]
        if coding in ("", "identity"):
            self.feed = lambda data: data
        elif coding in ("gzip", "x-gzip", "deflate"):
            obj = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in coding else zlib.MAX_WBITS)
            self.feed = obj.decompress
        elif coding == "br":
            import brotli

            self.feed = brotli.Decompressor().process
        elif coding == "zstd":
            import zstandard

            self.feed = zstandard.ZstdDecompressor().decompressobj().decompress
        else:
            raise ValueError(coding)


@dataclasses.dataclass
class AnswerScan:
    """The scan of one answer: text queued in order, one worker, findings collected."""

    runtime: Runtime
    sse: bool
    decoder: _Decoder
    limit: int
    held: bool = False  # block mode, not a stream: the whole answer waits for `response`
    ended: bool = False  # the stream's end (b"") was fed
    pending: str = ""
    scanned: int = 0
    truncated: bool = False
    findings: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    queue: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def feed(self, chunk: bytes) -> None:
        """Called from a stream function (synchronously, on the event loop)."""
        try:
            text = self.decoder.feed(chunk).decode("utf-8", "replace") if chunk else ""
        except Exception as e:
            self.error = f"the answer could not be decoded for its scan ({type(e).__name__})"
            text = ""
        self.pending += text
        if self.sse:
            *events, self.pending = self.pending.replace("\r\n", "\n").split("\n\n")
            for event in events:
                self._enqueue("\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:")))
        elif len(self.pending) >= BATCH:
            self._enqueue(self.pending)
            self.pending = ""
        if not chunk and not self.ended:
            self.ended = True
            self._enqueue(self.pending)
            self.pending = ""
            self.queue.put_nowait(None)

    def _enqueue(self, text: str) -> None:
        if not text or self.truncated:
            return
        if self.scanned + len(text) > self.limit:
            text, self.truncated = text[: self.limit - self.scanned], True
        self.scanned += len(text)
        self.queue.put_nowait(text)

    async def _work(self) -> None:
        while (text := await self.queue.get()) is not None:
            scanner, cache = self.runtime.scanner, self.runtime.scan_cache
            key = cache.key("prompt_injection", text) if cache is not None else None
            if key is not None and cache.is_clean(key):  # the same answer text, found clean before
                continue
            try:
                result = await scanner.scan_content(text)
            except ScannerUnavailable as e:
                self.error = f"scanner unavailable: {e.reason}"
                continue
            if result.decision != "deny" and key is not None:
                cache.add(key)
            if result.decision == "deny":
                self.findings += [rule for rule, _ in result.findings if rule not in self.findings]
                self.reasons += [r for rule, msg in result.findings if (r := f"{rule}: {msg}") not in self.reasons]

    async def finish(self, timeout: float) -> None:
        if self.worker is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.worker), timeout)
        except TimeoutError:
            self.error = f"the answer's scan did not finish within {timeout:g}s"
            self.worker.cancel()


class ResponseScanner:
    """Runs after the response filter, so it sees what the agent will see."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        policy = self.runtime.require_policy()
        resp = flow.response
        mode = policy.scanner.responses
        if mode == "off" or resp is None or st.blocked or not is_text(resp.headers.get("content-type", "")):
            return
        sse = "event-stream" in resp.headers.get("content-type", "").lower()
        try:
            decoder = _Decoder(resp.headers.get("content-encoding", ""))
        except ValueError:
            st.reason = st.reason or f"warning: an answer in content encoding {resp.headers['content-encoding']} " \
                                     "was not scanned"
            return
        held = mode == "block" and not sse
        scan = st.answer_scan = AnswerScan(self.runtime, sse, decoder, policy.scanner.max_body_bytes, held=held)
        if held:
            resp.stream = False  # held whole (bounded by bottle.mitm.patches), scanned in `response`
            return
        scan.start()
        resp.stream = _observe(resp.stream, scan, st, block=mode == "block")

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        st = FlowState.of(flow)
        scan: AnswerScan | None = st.answer_scan
        if scan is None or flow.response is None:
            return
        policy = self.runtime.require_policy()
        if scan.held:  # the whole answer is here: scrub it, then scan it before it goes
            _scan_held(flow, st, scan)
        elif not scan.ended:  # an answer without a body never reaches the stream function's end
            scan.feed(b"")
        await scan.finish(policy.scanner.timeout_seconds)
        _record(flow, st, scan, block=policy.scanner.responses == "block")


def _scan_held(flow: http.HTTPFlow, st: FlowState, scan: AnswerScan) -> None:
    body = flow.response.raw_content or b""
    if st.scrubber is not None:
        body = flow.response.content = st.scrubber.replace(body)
        st.scrubbed = st.scrubber.count
    scan.start()
    scan.feed(body)
    scan.feed(b"")


def _record(flow: http.HTTPFlow, st: FlowState, scan: AnswerScan, *, block: bool) -> None:
    st.answer_findings = scan.findings
    if scan.truncated and not st.reason:
        st.reason = f"warning: the answer was scanned up to {scan.limit} bytes"
    if block and (scan.error or scan.findings):
        reason = scan.error or "the answer carries " + "; ".join(scan.reasons)
        st.decision, st.reason, st.blocked = "block", reason, True
        if scan.held:  # a stream was cut where the finding came in; a held answer is replaced
            flow.response = refusal_response(502, reason, st.rule)
    elif scan.findings and not st.reason:
        st.reason = "warning: the answer carries " + "; ".join(scan.reasons)


def _observe(inner, scan: AnswerScan, st: FlowState, *, block: bool) -> Callable[[bytes], list[bytes]]:
    """Wrap the response's stream function: what it lets through is fed to the scan; in
    block mode nothing more goes once a finding is in."""

    def stream(chunk: bytes) -> list[bytes]:
        out = inner(chunk) if callable(inner) else [chunk]
        out = [out] if isinstance(out, bytes) else list(out)
        if block and (scan.findings or scan.error):
            return []
        for piece in out:
            scan.feed(piece)
        if not chunk:
            scan.feed(b"")
        return [piece for piece in out if piece]

    return stream
