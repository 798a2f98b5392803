"""Incremental scanning: text pipelock already found clean is not scanned again.

A coding agent re-sends its whole conversation on every model call (Claude Code's first
request is ~49 KB; a long session's reach 300-600 KB), so scanning each request whole
costs more every turn for text that was scanned the turn before. A large JSON body is
therefore scanned as units:

- **units**: every JSON string of at least UNIT_BYTES (a system prompt, a tool result, a
  file's contents), decoded, each its own text;
- **seams**: around each unit, the SEAM characters of raw body on either side of its
  boundaries, and the decoded ends of it and its neighbouring strings on adjacent lines
  (pipelock rejoins a key split over adjacent lines), so a secret split across a unit's
  edge, or across two adjacent strings, is still seen whole;
- **the rest**: the raw body with the units cut out (structure and every short string),
  and the short strings decoded in document order, each cut into CHUNK-sized pieces at
  fixed offsets with a seam over every cut. A conversation grows at its end, so the pieces
  before the end are the same as last turn's and are known clean; the request head (its
  Content-Length changes every turn) is scanned with the start of the body.

Each text's verdict is its own; a text found clean is remembered by a digest (never the text) in an LRU bounded by MAX_ENTRIES, keyed by the scanner configuration, so a reload
with another configuration starts empty. Nothing found is ever cached: a text that
carries a finding is scanned, and refused, every time. The URL is scanned on every request,
which also proves the scanner alive: a dead scanner blocks even a request seen before. Bodies below INCREMENTAL_BYTES and
other content types are scanned whole, as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import OrderedDict
from json.decoder import scanstring

from bottle.mitm.scanner import ALLOW, ScanResult, merge_results

INCREMENTAL_BYTES = 16 * 1024
UNIT_BYTES = 1024
SEAM = 256  # longer than any pattern pipelock matches whole (keys, tokens, their keywords)
CHUNK = 4096
MAX_ENTRIES = 200_000  # ~24 MiB of digests at most
CONCURRENCY = 8
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class CleanCache:
    """Digests of texts found clean, least recently used first out."""

    def __init__(self, config_id: str, max_entries: int = MAX_ENTRIES) -> None:
        self._salt = hashlib.sha256(config_id.encode()).digest()
        self._max = max_entries
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.hits = self.misses = 0

    def key(self, kind: str, text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=self._salt,
                               person=kind.encode()[:16]).digest()

    def is_clean(self, key: bytes) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, key: bytes) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


def split_json_body(head: str, raw: str) -> list[str] | None:
    """The texts of a large JSON body scanned as units (see the module doc); None when the
    body is not one a JSON parser would read (then it is scanned whole)."""
    pieces: list[str] = []  # the rest of the raw body, units cut out
    units: list[str] = []
    seams: list[str] = []
    short: list[str] = []
    last = 0
    previous: tuple[str, bool] | None = None  # the previous decoded string, and whether it is a unit
    for match in _STRING.finditer(raw):
        start, end = match.span()
        try:
            value, _ = scanstring(raw, start + 1)  # json's own (C) string decoder
        except (json.JSONDecodeError, ValueError):
            return None
        is_unit = end - start >= UNIT_BYTES
        if previous is not None and (is_unit or previous[1]):
            seams.append(previous[0][-SEAM:] + "\n" + value[:SEAM])
        previous = (value, is_unit)
        if not is_unit:
            short.append(value)
            continue
        pieces.append(raw[last:start] + '""')
        last = end
        units.append(value)
        seams.append(raw[max(0, start - SEAM):start + SEAM])
        seams.append(raw[max(start, end - SEAM):end + SEAM])
    if not units:
        return None
    pieces.append(raw[last:])
    rest = "".join(pieces)
    return [head + rest[:SEAM], *_pieces(rest), *_pieces("\n".join(short)), *units, *seams]


def _pieces(text: str) -> list[str]:
    """CHUNK-sized pieces at fixed offsets, and a seam over every cut."""
    cuts = range(CHUNK, len(text), CHUNK)
    return [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] + [text[c - SEAM:c + SEAM] for c in cuts]


async def scan_texts(scanner, cache: CleanCache | None, kind: str, texts: list[str]) -> ScanResult:
    """pipelock's verdict on each text (`dlp`, or `url` for URLs), skipping texts known
    clean; any deny denies."""
    todo = []
    for text in texts:
        if not text:
            continue
        key = cache.key(kind, text) if cache is not None else None
        if key is not None and cache.is_clean(key):
            continue
        todo.append((key, text))
    gate = asyncio.Semaphore(CONCURRENCY)

    ask = scanner.scan_url if kind == "url" else scanner.scan_text

    async def one(key: bytes | None, text: str) -> ScanResult:
        async with gate:
            result = await ask(text)
        if result.decision != "deny" and key is not None:
            cache.add(key)
        return result

    results = await asyncio.gather(*(one(key, text) for key, text in todo))
    return merge_results(list(results)) if results else ALLOW


async def scan_request(scanner, cache: CleanCache | None, url: str, texts: list[str]) -> ScanResult:
    """The url scan and the dlp scan of every text, concurrently; any deny denies."""
    # The URL is always asked: it is small, and it proves the scanner alive, so a dead
    # scanner blocks every request, seen before or not (fail closed).
    url_result, text_result = await asyncio.gather(scanner.scan_url(url), scan_texts(scanner, cache, "dlp", texts))
    merged = merge_results([url_result, text_result])
    if url_result.decision == "deny":
        merged = ScanResult(merged.decision, merged.findings, url_denied=True)
    return merged

