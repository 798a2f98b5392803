#!/usr/bin/env python3
"""Warm start and teardown time of `bottle start` on Docker, against the engine's floor.

Each run's agent command is `sh -c 'date +%s.%N'`: the timestamp it prints is when the
agent command ran. Per run we take

  to_command  agent timestamp - the moment we spawned the process
  teardown    process exit - agent timestamp (the command exits right after printing)
  total       process exit - spawn

for R runs each, interleaved, after one unmeasured warm-up run of each, of

  bottle      `python -m bottle start <minimal manifest> -- sh -c 'date +%s.%N'`
  floor       benchmarks/start_floor.sh: the same client makes the same three networks and
              three containers from the same images with everything in parallel and nothing
              checked, execs the command in the agent, removes it all
  docker_run  `docker run --rm <agent image> sh -c 'date +%s.%N'` (one container, for scale)

After every bottle run it counts what is left with bottle's labels (target: 0).
Targets (issue 13): bottle's to_command <= 1.3 x the floor's; bottle's teardown <= 1.0 s.
For bottle it also times its stderr milestones ("starting", "torn down").
Writes benchmarks/results/start_time.json.

    python benchmarks/start_time.py [--runs R] [--transparent] [--out PATH]

--transparent adds a series: the same bottle with `egress.capture: transparent`
(docs/prds/0009-transparent-capture.md): what installing the capture adds, and what reading
what it rejected adds to teardown.

Env: BOTTLE_PIPELOCK_IMAGE (scanner image in the manifest; required), BOTTLE_DOCKER
(docker client, default `docker` on PATH), BOTTLE_AGENT_IMAGE (default bottle/agent:0.1.0).
The bottle creates (and removes) its own networks; the agent command makes no requests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.3
TARGET_TEARDOWN_S = 1.0
AGENT_CMD = ["sh", "-c", "date +%s.%N"]
MILESTONES = {"bottle: starting ": "starting", "bottle: egress log: ": "egress_log", "bottle: torn down": "torn_down"}


def timed_run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict:
    """Spawn argv, stamp every stderr line on arrival, parse the agent's timestamp from stdout."""
    stderr_lines: list[tuple[float, str]] = []
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)

    def pump() -> None:
        for raw in proc.stderr:
            stderr_lines.append((time.time(), raw.decode(errors="replace").rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        stdout = proc.stdout.read()
        proc.wait()
    finally:
        killer.cancel()
    if proc.returncode < 0:
        raise RuntimeError(f"{' '.join(argv[:5])} did not finish within {timeout:g}s (killed)")
    end = time.time()
    reader.join(5)
    proc.stdout.close()
    proc.stderr.close()
    text = "\n".join(line for _, line in stderr_lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])} exited {proc.returncode}:\n{text[-3000:]}")
    stamps = [line for line in stdout.decode().split() if line.replace(".", "", 1).isdigit()]
    if not stamps:
        raise RuntimeError(f"no timestamp in the agent's output: {stdout[:200]!r}\n{text[-2000:]}")
    agent = float(stamps[-1])
    run = {"to_command_s": agent - start, "teardown_s": end - agent, "total_s": end - start}
    for t, line in stderr_lines:
        for prefix, name in MILESTONES.items():
            if line.startswith(prefix):
                run[f"{name}_at_s"] = t - start
        if line.startswith("bottle: starting "):
            run["bottle_id"] = line.split()[2]
    return run


def count_leftovers(docker: str, bottle_id: str) -> int:
    """Containers, networks and volumes of this bottle still there after its run."""
    total = 0
    for listing in (["ps", "--all", "-q"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
        out = subprocess.run([docker, *listing, "--filter", f"label=dev.bottle.bottle={bottle_id}"],
                             capture_output=True, text=True, timeout=60).stdout
        total += sum(1 for line in out.splitlines() if line.strip())
    return total


def summarize(runs: list[dict]) -> dict:
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs of each (default 5)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds allowed per run (default 180)")
    parser.add_argument("--transparent", action="store_true",
                        help="also time the bottle with egress.capture: transparent")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/start_time.json")
    args = parser.parse_args()
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be 1..50")

    docker = os.environ.get("BOTTLE_DOCKER") or shutil.which("docker")
    scanner_image = os.environ.get("BOTTLE_PIPELOCK_IMAGE")
    agent_image = os.environ.get("BOTTLE_AGENT_IMAGE", "bottle/agent:0.1.0")
    if not docker:
        print("start_time: no docker client: set BOTTLE_DOCKER or put docker on PATH", file=sys.stderr)
        return 2
    if not scanner_image:
        print("start_time: set BOTTLE_PIPELOCK_IMAGE to a local pipelock image", file=sys.stderr)
        return 2
    from bottle.plan import proxy_image

    for image in (agent_image, proxy_image(os.environ), scanner_image):
        if subprocess.run([docker, "image", "inspect", image], capture_output=True, timeout=60).returncode != 0:
            print(f"start_time: image {image} is missing (scripts/test or `bottle build` makes it)", file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="bottle-bench-start-"))
    manifest = tmp / "bottle.yaml"
    manifest.write_text(
        "version: 1\nname: bench\n"
        f"agent:\n  image: {agent_image}\n"
        f"scanner:\n  image: {scanner_image}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BOTTLE_KEEP"}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["BOTTLE_DOCKER"] = docker
    transparent = tmp / "bottle-transparent.yaml"
    transparent.write_text(manifest.read_text() + "egress:\n  capture: transparent\n")

    def bottle_argv(path: Path) -> list[str]:
        return [sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp / "egress.jsonl"), str(path),
                "--", *AGENT_CMD]

    contenders = {
        "floor": [str(REPO / "benchmarks/start_floor.sh"), scanner_image, proxy_image(os.environ), agent_image,
                  "--", *AGENT_CMD],
        "bottle": bottle_argv(manifest),
        "docker_run": [docker, "run", "--rm", agent_image, *AGENT_CMD],
    }
    if args.transparent:
        contenders["bottle_transparent"] = bottle_argv(transparent)
    results: dict = {name: [] for name in contenders}
    leftovers: list[int] = []
    try:
        print(f"start_time: warm-up, then {args.runs} runs each (interleaved)", file=sys.stderr, flush=True)
        for argv in contenders.values():
            timed_run(argv, env, tmp, args.timeout)
        for i in range(args.runs):
            shown, counted = [], len(leftovers)
            for name, argv in contenders.items():
                r = timed_run(argv, env, tmp, args.timeout)
                results[name].append(r)
                if "bottle_id" in r:
                    leftovers.append(count_leftovers(docker, r.pop("bottle_id")))
                shown.append(f"{name} {r['to_command_s']:.2f}s to command, {r['teardown_s']:.2f}s teardown")
            print(f"  run {i + 1}: " + " | ".join(shown) + f" | {sum(leftovers[counted:])} left over",
                  file=sys.stderr, flush=True)
    except Exception as e:
        print(f"start_time: error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: summarize(v) for k, v in results.items()}
    ratio_cmd = med["bottle"]["to_command_s"] / med["floor"]["to_command_s"]
    teardown = med["bottle"]["teardown_s"]
    targets = {
        "to_command": {"ratio_to_floor": ratio_cmd, "target": TARGET_RATIO, "pass": ratio_cmd <= TARGET_RATIO},
        "teardown": {"seconds": teardown, "target": TARGET_TEARDOWN_S, "leftovers": max(leftovers),
                     "pass": teardown <= TARGET_TEARDOWN_S and max(leftovers) == 0},
    }
    out = {
        "runs": results,
        "median": med,
        "leftovers_after_each_bottle": leftovers,
        "targets": targets,
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "runs": args.runs, "scanner_image": scanner_image, "agent_image": agent_image,
            "proxy_image": proxy_image(os.environ),
            "docker": subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                     text=True, timeout=30).stdout.strip(),
        },
    }
    print()
    print(f"{'median of ' + str(args.runs):18s} {'to command':>11s} {'teardown':>9s} {'total':>8s}")
    for name in results:
        m = med[name]
        print(f"{name:18s} {m['to_command_s']:10.2f}s {m['teardown_s']:8.2f}s {m['total_s']:7.2f}s")
    if "bottle_transparent" in med:
        added = {k: med["bottle_transparent"][k] - med["bottle"][k] for k in ("to_command_s", "teardown_s")}
        out["transparent_adds"] = added
        print(f"transparent capture adds {added['to_command_s']:+.2f}s to command, "
              f"{added['teardown_s']:+.2f}s to teardown (medians)")
    if "starting_at_s" in med["bottle"]:
        print(f"bottle milestones (median, from spawn): 'starting' {med['bottle']['starting_at_s']:.2f}s, "
              f"'egress log' {med['bottle'].get('egress_log_at_s', float('nan')):.2f}s, "
              f"'torn down' {med['bottle'].get('torn_down_at_s', float('nan')):.2f}s")
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"\ntarget: bottle time to agent command = {ratio_cmd:.2f} x the floor (<= {TARGET_RATIO}): "
          f"{verdict(targets['to_command']['pass'])}")
    print(f"target: bottle teardown {teardown:.2f}s (<= {TARGET_TEARDOWN_S:g}s) with {max(leftovers)} objects "
          f"left over (0): {verdict(targets['teardown']['pass'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
