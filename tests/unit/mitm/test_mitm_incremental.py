"""Incremental scanning: a conversation re-sent every turn costs only its new content,
and never hides a secret, split or not."""

from __future__ import annotations

import asyncio
import json

from bottle.mitm import incremental
from bottle.mitm.incremental import CleanCache, scan_texts, split_json_body
from bottle.mitm.scanner import ScanResult

AWS = "AKIAIOSFODNN7EXAMPLE"
FINDING = ("DLP-AWS Access ID", "Secret-like token detected (AWS Access ID)")


class PatternScanner:
    """Flags AWS key ids as pipelock does, a key split over adjacent lines included; counts
    what it is asked to scan."""

    def __init__(self):
        self.texts: list[str] = []

    async def scan_text(self, text):
        self.texts.append(text)
        lines = text.split("\n")
        joined = [a + b for a, b in zip(lines, lines[1:])]
        return ScanResult("deny", (FINDING,)) if any(AWS in t for t in [text, *joined]) else ScanResult("allow")

    async def scan_url(self, url):
        return ScanResult("allow")

    @property
    def scanned_bytes(self):
        return sum(len(t) for t in self.texts)


def conversation(turns: int, secret_in: int | None = None) -> str:
    messages = []
    for i in range(turns):
        text = f"turn {i}: " + ("lorem ipsum dolor sit amet " * 80) + f"file_{i}.py"
        if i == secret_in:
            text = text[:1000] + AWS + text[1000:]
        messages += [{"role": "user", "content": [{"type": "text", "text": text}]},
                     {"role": "assistant", "content": [{"type": "text", "text": f"ok {i}"}]}]
    return json.dumps({"model": "claude", "system": "You are helpful. " * 100, "messages": messages})


HEAD = "POST /v1/messages HTTP/1.1\r\ncontent-type: application/json\r\n\r\n"


def scan(scanner, cache, body: str) -> ScanResult:
    texts = split_json_body(HEAD, body)
    assert texts is not None
    return asyncio.run(scan_texts(scanner, cache, "dlp", texts))


def test_a_large_json_body_is_cut_into_units_seams_and_the_rest():
    body = conversation(3)
    texts = split_json_body(HEAD, body)
    decoded = json.loads(body)
    long_strings = [decoded["system"]] + [m["content"][0]["text"] for m in decoded["messages"] if m["role"] == "user"]
    assert texts[0].startswith(HEAD) and len(texts[0]) == len(HEAD) + incremental.SEAM
    assert [t for t in texts if t in long_strings] == long_strings  # each long string, decoded, in order
    assert any("ok 0" in t and "model" in t for t in texts)  # short strings decoded, in document order
    assert split_json_body(HEAD, json.dumps({"short": "x"})) is None


def test_each_turn_scans_only_what_is_new():
    scanner, cache = PatternScanner(), CleanCache("cfg")
    per_turn = []
    for turn in range(1, 11):
        before = scanner.scanned_bytes
        assert scan(scanner, cache, conversation(turn)).decision == "allow"
        per_turn.append(scanner.scanned_bytes - before)
    whole = len(conversation(10))
    assert per_turn[-1] < whole / 3  # the tenth turn scans a fraction of what it sends
    assert per_turn[-1] < 1.5 * per_turn[3]  # and what it scans does not grow with the conversation


def test_a_secret_in_a_unit_is_found_every_time_it_is_sent():
    scanner, cache = PatternScanner(), CleanCache("cfg")
    assert scan(scanner, cache, conversation(3)).decision == "allow"
    for _ in range(2):
        result = scan(scanner, cache, conversation(4, secret_in=3))
        assert (result.decision, result.findings) == ("deny", (FINDING,))


def test_a_secret_split_across_two_long_strings_is_caught_by_their_seam():
    body = json.dumps({"parts": ["x" * 2000 + AWS[:10], AWS[10:] + "y" * 2000]})
    scanner, cache = PatternScanner(), CleanCache("cfg")
    assert scan(scanner, cache, body).decision == "deny"
    seams = [t for t in split_json_body(HEAD, body)[2:] if f"{AWS[:10]}\n{AWS[10:]}" in t]
    assert seams, "the decoded seam puts the halves on adjacent lines"
    assert scan(scanner, cache, body).decision == "deny"  # and again, from a warm cache


def test_the_cache_forgets_the_least_recently_used_and_never_holds_text():
    cache = CleanCache("cfg", max_entries=3)
    keys = [cache.key("dlp", f"text {i}") for i in range(4)]
    for key in keys[:3]:
        cache.add(key)
    assert cache.is_clean(keys[0])
    cache.add(keys[3])
    assert not cache.is_clean(keys[1]) and cache.is_clean(keys[0]) and len(cache) == 3
    assert all(isinstance(k, bytes) and len(k) == 16 for k in keys)
    assert CleanCache("other").key("dlp", "text 0") != keys[0]  # another scanner configuration


def test_a_reload_with_another_scanner_configuration_empties_the_cache():
    from bottle.mitm.policy import parse_policy
    from bottle.mitm.state import Runtime
    from mitm_fixture import POLICY, policy_text

    runtime = Runtime()
    runtime.replace(parse_policy(policy_text()), object())
    runtime.scan_cache.add(runtime.scan_cache.key("dlp", "x"))
    runtime.replace(parse_policy(policy_text(mode="discover")), object())
    assert len(runtime.scan_cache) == 1  # same scanner: kept
    runtime.replace(parse_policy(policy_text(scanner={**POLICY["scanner"], "mode": "audit"})), object())
    assert len(runtime.scan_cache) == 0


def test_bodies_below_the_threshold_are_not_split():
    assert incremental.INCREMENTAL_BYTES > incremental.UNIT_BYTES


def test_a_repeated_request_asks_pipelock_only_for_the_url_the_second_time():
    from bottle.mitm.policy import parse_policy
    from mitm_fixture import ENV, Chain, policy_text
    from test_mitm_addon import FakeScanner, make_flow, run

    fake = FakeScanner()
    chain = Chain(None, fake, env=dict(ENV), emit=lambda line: None)
    chain.runtime.replace(parse_policy(policy_text()), fake)
    for _ in range(2):
        f = run(chain, make_flow(method="GET", url="https://raw.githubusercontent.com/a/b", headers=[("accept", "*/*")]))
        assert f.response.status_code == 200
    assert (len(fake.urls), len(fake.texts), len(fake.contents)) == (2, 1, 1)  # the URL scan proves it alive
    assert chain.runtime.scan_cache.hits == 2  # the request's text and the answer's
