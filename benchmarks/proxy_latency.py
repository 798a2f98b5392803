#!/usr/bin/env python3
"""Per-request latency and throughput of the egress proxy, on loopback.

Three paths to the same stdlib HTTPS test upstream (tests/upstream/server.py) on 127.0.0.1:

  direct    client -> upstream
  mitmdump  client -> bare `mitmdump` (regular mode, no addon) -> upstream
  bottle    client -> bottle's launcher (mitmproxy + bottle's addons) -> upstream,
            asking the real pipelock (POST /api/v1/scan) about every request

For each path: N sequential keep-alive HTTPS GETs and N POSTs with a ~2 KB JSON body
over one CONNECT tunnel (http.client + set_tunnel), then the same with C concurrent
clients (one keep-alive connection each). Reports p50/p99 per request, the latency each
proxy adds over direct, and requests per second. Writes benchmarks/results/proxy_latency.json.

Target (from the issue): bottle's added p50 <= 1.5 x bare mitmdump's added p50. Reported
as PASS/FAIL; a miss does not fail the process. Exit 2 if pipelock is missing, 1 on errors.

    python benchmarks/proxy_latency.py [--requests N] [--concurrency C] [--out PATH]

Env: BOTTLE_PIPELOCK_BIN (or pipelock on PATH), BOTTLE_MITMDUMP (default: mitmdump next
to this Python, else on PATH).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.3  # keep-alive GET and 2 KB POST: bottle's added p50 <= 1.3 x bare mitmdump's
NEW_CONNECTION_RATIO = 0.8  # a new connection per request: bottle's added p50 <= 0.8 x bare mitmdump's
POST_BODY = json.dumps({
    "model": "bench-model",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 70}],
}).encode()


def find_pipelock() -> str | None:
    found = os.environ.get("BOTTLE_PIPELOCK_BIN") or shutil.which("pipelock")
    return found if found and Path(found).exists() else None


def find_mitmdump() -> str | None:
    env = os.environ.get("BOTTLE_MITMDUMP")
    if env:
        return env if Path(env).exists() else None
    beside = Path(sys.executable).parent / "mitmdump"
    return str(beside) if beside.exists() else shutil.which("mitmdump")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Client:
    """One keep-alive HTTPS connection, optionally through an HTTP CONNECT proxy."""

    def __init__(self, port: int, cafile: Path, proxy_port: int | None, timeout: float = 30) -> None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        if proxy_port is None:
            self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=timeout)
        else:
            self.conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=timeout)
            self.conn.set_tunnel("localhost", port)

    def request(self, method: str) -> float:
        """One request; returns seconds from send to the last body byte. Raises on non-200."""
        body = POST_BODY if method == "POST" else None
        headers = {"content-type": "application/json"} if body else {}
        path = "/echo" if method == "POST" else "/"
        start = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {data[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def run_sequential(make_client, method: str, n: int, warmup: int) -> dict:
    client = make_client()
    try:
        for _ in range(warmup):
            client.request(method)
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            lat.append(client.request(method))
        wall = time.perf_counter() - t0
    finally:
        client.close()
    return {"n": n, "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3, "rps": n / wall}


def run_new_connections(make_client, n: int, warmup: int) -> dict:
    """curl-style: every GET on a new connection (TCP, CONNECT, TLS), as agents' tools do."""
    lat = []
    for i in range(warmup + n):
        start = time.perf_counter()
        client = make_client()
        try:
            client.request("GET")
        finally:
            client.close()
        if i >= warmup:
            lat.append(time.perf_counter() - start)
    return {"n": n, "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def run_concurrent(make_client, method: str, n: int, concurrency: int, warmup: int) -> dict:
    per = max(1, n // concurrency)
    clients = [make_client() for _ in range(concurrency)]
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1, timeout=120)

    def work(c: Client) -> None:
        mine = []
        try:
            for _ in range(warmup):
                c.request(method)
            barrier.wait()
            for _ in range(per):
                mine.append(c.request(method))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            try:
                barrier.abort()
            except Exception:
                pass
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"concurrent {method}: {errors[0]!r}")
    total = per * concurrency
    return {"n": total, "concurrency": concurrency, "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3, "rps": total / wall}


RSS_RATIO = 1.1  # the proxy's RSS after 10,000 requests <= 1.1 x after the first 1,000


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def measure_rss(make_client, pid: int, total: int) -> dict:
    """The launcher's resident memory after the first 1,000 keep-alive requests and after
    `total` (new connections every 100 requests, GETs and POSTs alternating)."""
    out: dict = {}
    done = 0
    while done < total:
        client = make_client()
        try:
            for i in range(100):
                client.request("GET" if i % 2 else "POST")
        finally:
            client.close()
        done += 100
        if done == 1000:
            out["after_1000_kb"] = _rss_kb(pid)
    out["after_total_kb"], out["total"] = _rss_kb(pid), total
    out["ratio"] = out["after_total_kb"] / out["after_1000_kb"]
    out["pass"] = out["ratio"] <= RSS_RATIO
    print(f"  bottle    RSS after 1,000 requests {out['after_1000_kb'] / 1024:.1f} MiB, after {total:,} "
          f"{out['after_total_kb'] / 1024:.1f} MiB ({out['ratio']:.2f}x)", file=sys.stderr, flush=True)
    return out


def start_mitmdump(binary: str, tmp: Path, bottle_ca_confdir: Path, upstream_ca: Path) -> tuple[subprocess.Popen, int]:
    from tests.support.loopback import free_port, wait_port

    confdir = tmp / "mitmdump-conf"
    confdir.mkdir()
    shutil.copy(bottle_ca_confdir / "mitmproxy-ca.pem", confdir / "mitmproxy-ca.pem")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("proxy") and "SSLKEYLOG" not in k}
    # Same transport options as bottle's launcher, so the difference is the addon + scanner.
    proc = subprocess.Popen(
        [binary, "--mode", f"regular@127.0.0.1:{port}", "--set", f"confdir={confdir}",
         "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}", "--set", "connection_strategy=lazy",
         "--set", "upstream_cert=false", "--set", "http3=false", "--set", "flow_detail=0",
         "--set", "termlog_verbosity=warn"],
        stdout=open(tmp / "mitmdump.log", "wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    wait_port(port, proc)
    return proc, port


def measure(label: str, make_client, args) -> dict:
    out = {"new_connection": run_new_connections(make_client, max(50, args.requests // 5), 5)}
    print(f"  {label:9s} GET  new connection each: p50 {out['new_connection']['p50_ms']:7.2f} ms",
          file=sys.stderr, flush=True)
    for method in ("GET", "POST"):
        seq = run_sequential(make_client, method, args.requests, args.warmup)
        conc = run_concurrent(make_client, method, args.requests, args.concurrency, 2)
        out[method] = {"sequential": seq, "concurrent": conc}
        print(f"  {label:9s} {method:4s} seq p50 {seq['p50_ms']:7.2f} ms  p99 {seq['p99_ms']:7.2f} ms  "
              f"{seq['rps']:7.1f} req/s | x{args.concurrency} {conc['rps']:7.1f} req/s", file=sys.stderr, flush=True)
    return out


def table(results: dict, concurrency: int) -> str:
    rows = [f"{'path':9s} {'method':6s} {'p50 ms':>8s} {'p99 ms':>8s} {'+p50 ms':>8s} {'+p99 ms':>8s} "
            f"{'seq req/s':>10s} {f'x{concurrency} req/s':>10s} {f'x{concurrency} p50':>9s}"]
    for path in ("direct", "mitmdump", "bottle"):
        for method in ("GET", "POST"):
            r = results["paths"][path][method]
            add = results["added"].get(path, {}).get(method)
            rows.append(
                f"{path:9s} {method:6s} {r['sequential']['p50_ms']:8.2f} {r['sequential']['p99_ms']:8.2f} "
                f"{(add['p50_ms'] if add else 0):8.2f} {(add['p99_ms'] if add else 0):8.2f} "
                f"{r['sequential']['rps']:10.1f} {r['concurrent']['rps']:10.1f} {r['concurrent']['p50_ms']:9.2f}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per measurement (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/proxy_latency.json")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs) for inspection")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests for the memory figure")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 64:
        parser.error("--requests must be 1..100000 and --concurrency 1..64")

    if find_pipelock() is None:
        print("proxy_latency: pipelock binary not found: set BOTTLE_PIPELOCK_BIN or put pipelock on PATH",
              file=sys.stderr)
        return 2
    mitmdump = find_mitmdump()
    if mitmdump is None:
        print("proxy_latency: mitmdump not found: set BOTTLE_MITMDUMP or install mitmproxy==12.2.3", file=sys.stderr)
        return 2
    os.environ["BOTTLE_PIPELOCK_BIN"] = find_pipelock()

    from tests.support.loopback import Loopback

    tmp = Path(tempfile.mkdtemp(prefix="bottle-bench-"))
    lb = Loopback(tmp)
    dump_proc = None
    try:
        lb.start()  # pipelock, the upstream and bottle's launcher, as the loopback tests run them
        dump_proc, dump_port = start_mitmdump(mitmdump, tmp, tmp / "run" / "mitmproxy", lb.upstream_ca)
        up = lb.upstream_port
        paths = {
            "direct": lambda: Client(up, lb.upstream_ca, None),
            "mitmdump": lambda: Client(up, lb.bottle_ca, dump_port),
            "bottle": lambda: Client(up, lb.bottle_ca, lb.proxy_port),
        }
        print(f"proxy_latency: {args.requests} requests per figure, {args.concurrency} concurrent clients",
              file=sys.stderr, flush=True)
        results: dict = {"paths": {}, "added": {}}
        for label, make in paths.items():
            results["paths"][label] = measure(label, make, args)
        results["rss"] = measure_rss(paths["bottle"], lb.procs["launcher"].pid, args.rss_requests)
    except Exception as e:
        print(f"proxy_latency: error: {e}", file=sys.stderr)
        for name in ("proxy.err", "mitmdump.log", "pipelock.log"):
            if (tmp / name).exists():
                print(f"--- {name} (tail)\n{(tmp / name).read_text(errors='replace')[-2000:]}", file=sys.stderr)
        return 1
    finally:
        if dump_proc is not None and dump_proc.poll() is None:
            dump_proc.send_signal(signal.SIGTERM)
            try:
                dump_proc.wait(10)
            except subprocess.TimeoutExpired:
                dump_proc.kill()
        lb.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"proxy_latency: logs kept in {tmp}", file=sys.stderr)

    direct = results["paths"]["direct"]
    for label in ("mitmdump", "bottle"):
        results["added"][label] = {
            m: {q: results["paths"][label][m]["sequential"][q] - direct[m]["sequential"][q] for q in ("p50_ms", "p99_ms")}
            for m in ("GET", "POST")
        }
    verdicts = {}
    for m in ("GET", "POST"):
        bare, full = results["added"]["mitmdump"][m]["p50_ms"], results["added"]["bottle"][m]["p50_ms"]
        ratio = full / bare if bare > 0 else float("inf")
        verdicts[m] = {"ratio": ratio, "target": TARGET_RATIO, "pass": ratio <= TARGET_RATIO}
    new_added = {label: results["paths"][label]["new_connection"]["p50_ms"]
                 - direct["new_connection"]["p50_ms"] for label in ("mitmdump", "bottle")}
    results["added"]["new_connection_p50_ms"] = new_added
    ratio = new_added["bottle"] / new_added["mitmdump"] if new_added["mitmdump"] > 0 else float("inf")
    verdicts["new_connection"] = {"ratio": ratio, "target": NEW_CONNECTION_RATIO, "pass": ratio <= NEW_CONNECTION_RATIO}
    results["target"] = verdicts
    results["meta"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup,
        "post_body_bytes": len(POST_BODY),
    }
    print()
    print(table(results, args.concurrency))
    print()
    rss = results["rss"]
    print(f"memory: RSS {rss['after_1000_kb'] / 1024:.1f} MiB after 1,000 requests, "
          f"{rss['after_total_kb'] / 1024:.1f} MiB after {rss['total']:,}: {rss['ratio']:.2f}x "
          f"(<= {RSS_RATIO}): {'PASS' if rss['pass'] else 'FAIL'}")
    print(f"new connection per GET: added p50 mitmdump {new_added['mitmdump']:.2f} ms, "
          f"bottle {new_added['bottle']:.2f} ms")
    for m, v in verdicts.items():
        print(f"target {m}: bottle added p50 = {v['ratio']:.2f} x mitmdump added p50 (<= {v['target']}): "
              f"{'PASS' if v['pass'] else 'FAIL'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
