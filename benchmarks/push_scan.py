#!/usr/bin/env python3
"""What scanning a push costs: the time a push waits for its verdict once its body has
arrived, and the proxy's CPU to read the pack, on loopback with the real pipelock.

Packs are made by the real git as `git push` makes them (thin, offset deltas):

  typical   one commit on a 50-file repository: 5 files edited (+20 lines each), 2 added
  text-1mb  a new branch adding 1 MB of source-like text (250 files)
  bin-100mb one commit adding 100 MB of random bytes (binary: read, hashed, not scanned)

Each push runs through bottle's own code path without mitmproxy: the stream function
(`bottle.mitm.push`) fed in 64 KiB chunks with the event loop running between them (as
fast as the loop goes: the upload's own time would hide part of the scanning), then
`push.settle`, which mitmproxy awaits before the push's end goes upstream. `wait` is that
settle time: what the push adds to git's wait. Median of R runs. Writes
benchmarks/results/push_scan.json.

    python benchmarks/push_scan.py [--runs R] [--out PATH]

Env: BOTTLE_PIPELOCK_BIN (or pipelock on PATH). Exit 2 if pipelock is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bottle.launch.pipelock_config import render_pipelock_config  # noqa: E402
from bottle.mitm import git, push  # noqa: E402
from bottle.mitm.policy import GitPolicy, GitRepository  # noqa: E402
from bottle.mitm.scanner import ScannerClient  # noqa: E402
from bottle.mitm.state import FlowState  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
CHUNK = 65536
POLICY = GitPolicy(repositories=(GitRepository(id="git.repositories[0]", host="github.com", path="o/r", access="push"),),
                   protected_branches=("main",), push_branches=None, allow_force_push=False,
                   allow_branch_deletion=False)


def source_file(rng: random.Random, lines: int) -> str:
    words = ["value", "config", "handler", "request", "result", "items", "index", "name", "client", "token_ref"]
    return "".join(f"    {rng.choice(words)}_{i} = {rng.choice(words)}({rng.randint(0, 9999)})  # {rng.choice(words)}\n"
                   for i in range(lines))


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                    "GIT_COMMITTER_EMAIL": "a@b", "HOME": str(path), "PATH": os.environ.get("PATH", "/usr/bin")}
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, input: bytes | None = None) -> bytes:
        return subprocess.run(["git", "-C", str(self.path), *args], input=input, check=True, capture_output=True,
                              env=self.env).stdout

    def commit(self, files: dict[str, bytes | str], message: str) -> str:
        for name, content in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").decode().strip()

    def body(self, new: str, old: str | None) -> bytes:
        revs = f"{new}\n" + (f"^{old}\n" if old else "")
        data = self.git("pack-objects", "--stdout", "--revs", "--thin", "--delta-base-offset", "-q", input=revs.encode())
        line = f"{old or git.ZERO_OID} {new} refs/heads/feature".encode() + b"\0report-status side-band-64k\n"
        return git.pkt(line) + b"0000" + data


def scenarios(tmp: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    out = {}
    repo = Repo(tmp / "typical")
    files = {f"src/mod{i}.py": source_file(rng, 100) for i in range(50)}
    old = repo.commit(files, "seed")
    edits = {f"src/mod{i}.py": files[f"src/mod{i}.py"] + source_file(rng, 20) for i in range(5)}
    edits.update({"src/new_a.py": source_file(rng, 40), "src/new_b.py": source_file(rng, 40)})
    out["typical"] = repo.body(repo.commit(edits, "edit five files, add two"), old)
    repo = Repo(tmp / "text")
    out["text-1mb"] = repo.body(repo.commit({f"pkg/f{i}.py": source_file(rng, 60) for i in range(250)}, "1 MB"), None)
    repo = Repo(tmp / "bin")
    out["bin-100mb"] = repo.body(repo.commit({"blob.bin": os.urandom(100_000_000)}, "100 MB"), None)
    return out


async def one_push(body: bytes, scanner: ScannerClient) -> dict:
    st = FlowState(rule="git.repositories[0]")
    st.push_scan = push.PushScan(scanner)
    st.push = git.PushInspector(POLICY, sink=st.push_scan.text)
    stream = push._stream(st, st.push, st.push_scan)
    cpu0, t0 = time.process_time(), time.perf_counter()
    sent = 0
    for i in range(0, len(body), CHUNK):
        sent += sum(map(len, stream(body[i:i + CHUNK])))
        await asyncio.sleep(0)
    t1 = time.perf_counter()
    await push.settle(st)
    t2 = time.perf_counter()
    sent += sum(map(len, stream(b"")))
    if sent != len(body) or st.push.refusals:
        raise RuntimeError(f"the push was not passed whole: {st.push.refusals}")
    return {"feed_s": t1 - t0, "wait_s": t2 - t1, "cpu_s": time.process_time() - cpu0,
            "scanned_bytes": st.push_scan.scanned}


def start_pipelock(binary: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    config = tmp / "pipelock.yaml"
    config.write_text(render_pipelock_config(scan_listen=f"127.0.0.1:{ports[0]}", main_listen=f"127.0.0.1:{ports[1]}",
                                             token=TOKEN, max_body_bytes=8 * 1024 * 1024))
    proc = subprocess.Popen([binary, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports[0]), 0.2).close()
            return proc, ports[0]
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pipelock did not start") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "push_scan.json")
    args = parser.parse_args()
    binary = os.environ.get("BOTTLE_PIPELOCK_BIN") or shutil.which("pipelock")
    if not binary or not Path(binary).exists():
        print("push_scan: pipelock binary not found: set BOTTLE_PIPELOCK_BIN or put pipelock on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bodies = scenarios(tmp)
        proc, port = start_pipelock(binary, tmp)
        try:
            results = asyncio.run(run_all(bodies, port, args.runs))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{'push':<10} {'body':>10} {'scanned':>10} {'feed s':>8} {'wait s':>8} {'cpu s':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['body_bytes']:>10} {r['scanned_bytes']:>10} {r['feed_s']:>8.3f} {r['wait_s']:>8.3f} "
              f"{r['cpu_s']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "runs": args.runs, "chunk": CHUNK, "results": results}, indent=2) + "\n")
    return 0


async def run_all(bodies: dict[str, bytes], port: int, runs: int) -> dict:
    scanner = ScannerClient(f"http://127.0.0.1:{port}/api/v1/scan", TOKEN, timeout=30)
    results = {}
    try:
        for name, body in bodies.items():
            await one_push(body, scanner)  # warm-up
            samples = [await one_push(body, scanner) for _ in range(runs)]
            results[name] = {"body_bytes": len(body), "scanned_bytes": samples[0]["scanned_bytes"],
                             **{k: statistics.median(s[k] for s in samples) for k in ("feed_s", "wait_s", "cpu_s")},
                             "samples": samples}
    finally:
        await scanner.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
