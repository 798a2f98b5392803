#!/usr/bin/env python3
"""A 40-turn coding-agent conversation through the proxy, on loopback.

A coding agent re-sends the whole conversation on every model call. This replays a
generated, deterministic Messages-API conversation (system prompt, tool definitions, code
files read by tools, tool results, prose) that grows to ~600 KB, one POST per turn, over
three paths to the same HTTPS test upstream:

  direct    client -> upstream
  mitmdump  client -> bare `mitmdump` -> upstream
  bottle    client -> bottle's launcher, asking the real pipelock -> upstream

and, as the reference for the scan cost, pipelock's scan API asked directly about only
what each turn adds. Reports each turn's added latency and the totals; writes
benchmarks/results/conversation.json.

Targets (issue 13): bottle's added p50 per turn <= mitmdump's added p50 + 10 ms, and
bottle's total added over the turns <= 1.5 x what scanning only each turn's new content
costs. Reported as PASS/FAIL; a miss does not fail the process.

    python benchmarks/conversation.py [--turns 40] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))
from proxy_latency import Client, find_mitmdump, find_pipelock, percentile, start_mitmdump  # noqa: E402

WORDS = ("the parser returns a token when the buffer holds a complete line and the caller retries "
         "after reading more input from the socket so the test covers partial reads and errors").split()


def code_file(rng: random.Random, name: str, lines: int) -> str:
    out = [f"# {name}", "from __future__ import annotations", "", "import os", ""]
    for i in range(lines // 6):
        fn = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i}"
        out += [f"def {fn}(value: int, items: list[str]) -> int:",
                f'    """{" ".join(rng.choice(WORDS) for _ in range(8))}."""',
                f"    total = value * {rng.randint(2, 99)} + len(items)",
                f"    if total > {rng.randint(100, 999)}:",
                "        raise ValueError(f'too large: {total}')",
                "    return total", ""]
    return "\n".join(out)


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def conversation(turns: int, seed: int = 7) -> list[bytes]:
    """The request body of each turn: the whole conversation so far."""
    rng = random.Random(seed)
    system = [{"type": "text", "text": prose(rng, 1500)}]
    tools = [{"name": f"tool_{i}", "description": prose(rng, 60),
              "input_schema": {"type": "object", "properties": {"path": {"type": "string", "description": prose(rng, 12)}}}}
             for i in range(16)]
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": prose(rng, 80)}]}]
    bodies = []
    for turn in range(turns):
        bodies.append(json.dumps({"model": "claude-bench", "max_tokens": 8192, "system": system, "tools": tools,
                                  "messages": messages}).encode())
        tool_id = f"toolu_{turn:04d}{rng.randrange(16**12):012x}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": prose(rng, 40)},
            {"type": "tool_use", "id": tool_id, "name": "read_file", "input": {"path": f"src/module_{turn}.py"}}]})
        # Like a real session: mostly small tool results (a command's output, a grep), some
        # source files, now and then a large one; ~15 KB a turn on average.
        size = rng.choices([rng.randint(30, 90), rng.randint(200, 500), rng.randint(900, 1400)], [5, 3, 2])[0]
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": code_file(rng, f"src/module_{turn}.py", size)},
            {"type": "text", "text": prose(rng, 30)}]})
    return bodies


def new_content(previous: bytes | None, body: bytes) -> str:
    """What a turn adds to the conversation: the messages not in the previous turn's body."""
    now = json.loads(body)["messages"]
    before = json.loads(previous)["messages"] if previous else []
    if not previous:
        return body.decode()
    return json.dumps(now[len(before):])


class Poster(Client):
    def post(self, body: bytes) -> float:
        start = time.perf_counter()
        self.conn.request("POST", "/echo", body=body, headers={"content-type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"turn answered {resp.status}: {data[:300]!r}")
        return elapsed


def replay(make_client, bodies: list[bytes]) -> list[float]:
    client = make_client()
    try:
        return [client.post(body) for body in bodies]
    finally:
        client.close()


async def scan_new_content(scanner_port: int, token: str, bodies: list[bytes]) -> list[float]:
    """pipelock's scan API asked directly about only what each turn adds."""
    from bottle.mitm.scanner import ScannerClient

    client = ScannerClient(f"http://127.0.0.1:{scanner_port}/api/v1/scan", token, timeout=60)
    times = []
    try:
        previous = None
        for body in bodies:
            text = new_content(previous, body)
            start = time.perf_counter()
            await client.scan_text(text)
            times.append(time.perf_counter() - start)
            previous = body
    finally:
        await client.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/conversation.json")
    args = parser.parse_args()
    pipelock, mitmdump = find_pipelock(), find_mitmdump()
    if pipelock is None or mitmdump is None:
        print("conversation: needs pipelock (BOTTLE_PIPELOCK_BIN) and mitmdump (BOTTLE_MITMDUMP)", file=sys.stderr)
        return 2
    import os

    os.environ["BOTTLE_PIPELOCK_BIN"] = pipelock
    from tests.support.loopback import TOKEN, Loopback

    bodies = conversation(args.turns)
    print(f"conversation: {args.turns} turns, {len(bodies[0]) / 1024:.0f} KB to {len(bodies[-1]) / 1024:.0f} KB",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bottle-bench-conv-"))
    lb = Loopback(tmp)
    dump_proc = None
    try:
        lb.start()
        dump_proc, dump_port = start_mitmdump(mitmdump, tmp, tmp / "run" / "mitmproxy", lb.upstream_ca)
        up = lb.upstream_port
        lat = {
            "direct": replay(lambda: Poster(up, lb.upstream_ca, None), bodies),
            "mitmdump": replay(lambda: Poster(up, lb.bottle_ca, dump_port), bodies),
            "bottle": replay(lambda: Poster(up, lb.bottle_ca, lb.proxy_port), bodies),
        }
        scan_new = asyncio.run(scan_new_content(lb.scanner_port, TOKEN, bodies))
    finally:
        if dump_proc is not None and dump_proc.poll() is None:
            dump_proc.send_signal(signal.SIGTERM)
            dump_proc.wait(10)
        lb.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    added = {path: [a - d for a, d in zip(lat[path], lat["direct"])] for path in ("mitmdump", "bottle")}
    rows = ["turn    KB  direct ms  +mitmdump ms  +bottle ms  scan-new ms"]
    for i, body in enumerate(bodies):
        rows.append(f"{i + 1:4d} {len(body) / 1024:5.0f} {lat['direct'][i] * 1e3:10.1f} {added['mitmdump'][i] * 1e3:13.1f}"
                    f" {added['bottle'][i] * 1e3:11.1f} {scan_new[i] * 1e3:12.1f}")
    p50_bottle, p50_dump = percentile(added["bottle"], 50) * 1e3, percentile(added["mitmdump"], 50) * 1e3
    total_bottle, total_scan_new = sum(added["bottle"]) * 1e3, sum(scan_new) * 1e3
    per_turn_ok = p50_bottle <= p50_dump + 10
    total_ok = total_bottle <= 1.5 * total_scan_new
    summary = [
        f"added p50 per turn: bottle {p50_bottle:.1f} ms, mitmdump {p50_dump:.1f} ms; target <= mitmdump + 10 ms: "
        f"{'PASS' if per_turn_ok else 'FAIL'}",
        f"total added over {len(bodies)} turns: bottle {total_bottle:.0f} ms; scanning only new content "
        f"{total_scan_new:.0f} ms; target <= 1.5x: {'PASS' if total_ok else 'FAIL'} "
        f"({total_bottle / total_scan_new:.2f}x)",
    ]
    print("\n".join(rows + [""] + summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "turns": len(bodies), "body_kb": [round(len(b) / 1024, 1) for b in bodies],
        "latency_ms": {k: [round(v * 1e3, 2) for v in vs] for k, vs in lat.items()},
        "added_ms": {k: [round(v * 1e3, 2) for v in vs] for k, vs in added.items()},
        "scan_new_content_ms": [round(v * 1e3, 2) for v in scan_new],
        "added_p50_ms": {"bottle": round(p50_bottle, 2), "mitmdump": round(p50_dump, 2)},
        "total_added_ms": {"bottle": round(total_bottle, 1), "scan_new_content": round(total_scan_new, 1)},
        "targets": {"per_turn_p50": "PASS" if per_turn_ok else "FAIL", "total": "PASS" if total_ok else "FAIL"},
        "mean_direct_ms": round(statistics.fmean(lat["direct"]) * 1e3, 2),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
