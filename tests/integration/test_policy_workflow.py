"""Discover → suggest → enforce → replay, for real: a bottle in discover mode runs a workload
against the test upstreams (an API with a credential, downloads, telemetry, and git smart
HTTP served by `git http-backend` as github.com); `bottle policy suggest` merges a policy
from its log into the manifest; a second bottle enforces it and the same workload works;
`bottle policy replay` against a tightened manifest names exactly what it would block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import bottle_env, certs_tar, docker, leftovers, wait_listening
from tests.support.certs import make_upstream_pki
from tests.support.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.needs_pipelock]

GIT_IMAGE = os.environ.get("BOTTLE_TEST_GIT_IMAGE", "bottle-test/git:latest")
UPSTREAM_IMAGE = os.environ.get("BOTTLE_TEST_UPSTREAM_IMAGE", "bottle-test/upstream:latest")
API_HOSTS = ["api.anthropic.com", "downloads.example.com", "telemetry.example.com"]
REAL_KEY = "bottle-test-real-key-5c2e9a7d1b3f4e6a"

# Each step prints `<name> <HTTP status or git exit code>`. A status from the upstream (its
# 200 or its 404 for paths it does not serve) means the request got through.
WORKLOAD = r"""
export HOME=/tmp/home; mkdir -p $HOME; cd /tmp; rm -rf w
git config --global user.email agent@test; git config --global user.name agent
api() { curl -sS -o /dev/null -w '%{http_code}' -H "x-api-key: $BOTTLE_TEST_API_KEY" "$@"; }
echo "messages $(api -H 'content-type: application/json' --data '{"model": "m"}' https://api.anthropic.com/v1/messages)"
echo "count $(api -H 'content-type: application/json' --data '{"n": 1}' https://api.anthropic.com/v1/messages/count_tokens)"
echo "settings $(api https://api.anthropic.com/api/claude_code/settings)"
echo "limits $(api https://api.anthropic.com/api/claude_code/policy_limits)"
for pkg in requests/2.31.0/requests-2.31.0.tar.gz click/8.1.7/click-8.1.7.tar.gz; do
  echo "download $(curl -sS -o /dev/null -w '%{http_code}' https://downloads.example.com/pkg/$pkg)"
done
echo "telemetry $(curl -sS -o /dev/null -w '%{http_code}' --data '{"e": 1}' https://telemetry.example.com/v1/collect)"
git clone -q https://github.com/acme/widgets.git w 2>&1; echo "clone $?"
cd w && echo "$BRANCH" > f && git add f && git commit -qm "$BRANCH"
git push -q origin "HEAD:refs/heads/sandbox/$BRANCH" 2>&1; echo "push $?"
"""


@pytest.fixture(scope="module")
def world(engine, tmp_path_factory):
    """An API upstream (several names) and a git server as github.com on one test network."""
    if docker("image", "inspect", GIT_IMAGE, check=False).returncode != 0:
        missing(f"image {GIT_IMAGE} is not built (scripts/test builds it)")
    suffix = uuid.uuid4().hex[:6]
    network = f"bottle-test-flownet-{suffix}"
    git_container, api_container = f"bottle-test-flowgit-{suffix}", f"bottle-test-flowapi-{suffix}"
    pki = make_upstream_pki(tmp_path_factory.mktemp("flowpki"), ["github.com", *API_HOSTS])
    tar = certs_tar(pki)
    docker("network", "create", "--label", "dev.bottle.test=true", network)
    try:
        docker("create", "--name", git_container, "--network", network, "--network-alias", "github.com",
               "--label", "dev.bottle.test=true", GIT_IMAGE)
        aliases = [arg for host in API_HOSTS for arg in ("--network-alias", host)]
        docker("create", "--name", api_container, "--network", network, *aliases, "--label", "dev.bottle.test=true",
               UPSTREAM_IMAGE, "--host", "0.0.0.0", "--port", "443", "--cert", "/certs/server.pem",
               "--key", "/certs/server.key", "--name", "api")
        for container in (git_container, api_container):
            docker("cp", "-", f"{container}:/", input=tar)
            docker("start", container)
            wait_listening(container)
        yield {"network": network, "ca": pki["ca"], "git": git_container}
    finally:
        docker("rm", "-f", git_container, api_container, check=False)
        docker("network", "rm", network, check=False)


def requests(log: Path) -> list[dict]:
    return [line for line in map(json.loads, log.read_text().splitlines()) if "method" in line]


def bottle(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bottle", *args], capture_output=True, text=True, cwd=cwd,
                          env=bottle_env(env), timeout=timeout, stdin=subprocess.DEVNULL)


def run_workload(manifest: Path, log: Path, branch: str, *mode: str) -> tuple[dict[str, str], str]:
    result = bottle("start", *mode, "--egress-log", str(log), str(manifest), "--", "sh", "-c",
                    f"BRANCH={branch}\n{WORKLOAD}", cwd=manifest.parent, env={"BOTTLE_TEST_API_KEY": REAL_KEY})
    bottle_id = next(line.split()[-1] for line in result.stderr.splitlines() if line.startswith("bottle: starting "))
    assert leftovers(bottle_id) == []
    steps: dict[str, str] = {}
    for name, value in re.findall(r"^(\w+) (\d+)$", result.stdout, re.M):
        steps[name] = steps[name] + " " + value if name in steps else value
    assert "push" in steps, f"the workload did not finish\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return steps, result.stderr


@pytest.fixture(scope="module")
def flow(world, pipelock_image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flow")
    (tmp / "upstream-ca.pem").write_bytes(world["ca"].read_bytes())
    manifest = tmp / "bottle.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: flow
        egress:
          mode: enforce
          allow:
            # The test upstreams have private addresses, which only a rule naming the host
            # with private_upstream reaches. These rules allow nothing the workload does, so
            # the discover run logs all of it as would_block.
            - {{host: api.anthropic.com, paths: [/nothing/], private_upstream: true}}
            - {{host: downloads.example.com, paths: [/nothing/], private_upstream: true}}
            - {{host: telemetry.example.com, paths: [/nothing/], private_upstream: true}}
            - {{host: github.com, paths: [/nothing/], private_upstream: true}}
          routes:
            - host: api.anthropic.com
              paths: [/v1/]
              auth: {{scheme: header, header: x-api-key, token_ref: BOTTLE_TEST_API_KEY}}
          upstream_ca: upstream-ca.pem
        scanner:
          image: {pipelock_image}
        docker:
          egress_network: {world['network']}
        """))
    original = manifest.read_text()
    discover_log, enforce_log = tmp / "discover.jsonl", tmp / "enforce.jsonl"
    discovered, discover_err = run_workload(manifest, discover_log, "discover", "--mode", "discover")
    suggested = bottle("policy", "suggest", str(discover_log), "--manifest", str(manifest), "--write", cwd=tmp)
    merged = manifest.read_text()
    enforced, enforce_err = run_workload(manifest, enforce_log, "enforce")
    return {"tmp": tmp, "manifest": manifest, "original": original, "merged": merged, "suggested": suggested,
            "discovered": discovered, "discover_err": discover_err, "enforced": enforced,
            "enforce_err": enforce_err, "discover_log": discover_log, "enforce_log": enforce_log,
            "refs": docker("exec", world["git"], "git", "--git-dir", "/srv/git/acme/widgets.git", "for-each-ref",
                           "--format=%(refname)").stdout.decode().split()}


def test_discover_mode_lets_the_workload_through_and_logs_what_enforce_would_block(flow):
    steps = flow["discovered"]
    assert (steps["messages"], steps["count"], steps["download"], steps["telemetry"], steps["clone"]) == (
        "200", "200", "404 404", "200", "0")
    # Still refused in discover mode: the key sent outside its route (/v1/ only), and a
    # push's binary pack, which cannot be scanned without git policy to stream it.
    assert (steps["settings"], steps["limits"]) == ("403", "403")
    assert steps["push"] != "0"
    lines = requests(flow["discover_log"])
    assert {line["decision"] for line in lines} == {"would_block", "block"}
    summary = next(line for line in flow["discover_err"].splitlines() if " requests, " in line)
    blocked = sum(line["decision"] == "block" for line in lines)
    would = sum(line["decision"] == "would_block" for line in lines)
    assert summary.startswith(f"bottle: {len(lines)} requests, {blocked} blocked, {would} would_block (most blocked: ")
    assert summary.endswith(f"; log: {flow['discover_log']}")


def test_suggest_merges_a_reviewable_policy_keeping_the_manifest_as_written(flow):
    assert flow["suggested"].returncode == 0, flow["suggested"].stderr
    merged, original = flow["merged"], flow["original"]
    # Every line the user wrote is still there, in order; one grew a path for the route.
    route_paths = "      paths: [/v1/]"
    kept = iter(merged.splitlines())
    assert all(any(line == m for m in kept) for line in original.splitlines() if line != route_paths)
    assert ("      paths: [/v1/, /api/claude_code/]  # suggested: + /api/claude_code/ (2 requests carried "
            "BOTTLE_TEST_API_KEY's placeholder, e.g. GET /api/claude_code/policy_limits; refused outside this "
            "route until now)") in merged.splitlines()
    data = yaml.safe_load(merged)
    rules = {(r["host"], tuple(r.get("methods", ())), tuple(r.get("paths", ()))) for r in data["egress"]["allow"]}
    assert {("api.anthropic.com", ("POST",), ("/v1/messages",)),
            ("downloads.example.com", ("GET",), ("/pkg/click/", "/pkg/requests/")),
            ("github.com", ("GET", "POST"), ("/acme/widgets.git/",))} <= rules
    assert not any(host == "telemetry.example.com" and paths != ("/nothing/",) for host, _, paths in rules)
    assert "    # - host: telemetry.example.com\n" in merged
    assert data["egress"]["routes"][0]["paths"] == ["/v1/", "/api/claude_code/"]
    assert data["git"]["repositories"] == [{"repo": "github.com/acme/widgets", "access": "push"}]
    assert bottle("validate", str(flow["manifest"]), cwd=flow["tmp"]).returncode == 0


def test_the_enforced_policy_lets_the_same_workload_succeed(flow):
    steps = flow["enforced"]
    assert (steps["messages"], steps["count"], steps["settings"], steps["limits"], steps["download"],
            steps["clone"], steps["push"]) == ("200", "200", "404", "404", "404 404", "0", "0")
    assert steps["telemetry"] == "403"  # commented out by suggest, for the user to decide
    assert "refs/heads/sandbox/enforce" in flow["refs"]
    lines = requests(flow["enforce_log"])
    assert [(line["host"], line["path"]) for line in lines if line["decision"] != "allow"] == [
        ("telemetry.example.com", "/v1/collect")]
    assert REAL_KEY not in flow["enforce_log"].read_text()


def test_replay_against_a_tightened_manifest_names_exactly_what_it_would_block(flow):
    data = yaml.safe_load(flow["merged"])
    data["egress"]["allow"] = [r for r in data["egress"]["allow"]
                               if not (r["host"] == "downloads.example.com" and r.get("paths") != ["/nothing/"])]
    data["git"]["repositories"][0]["access"] = "read"
    tight = flow["tmp"] / "tight.yaml"
    tight.write_text(yaml.safe_dump(data, sort_keys=False))
    result = bottle("policy", "replay", str(flow["enforce_log"]), str(tight), "--format", "json", cwd=flow["tmp"])
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    newly = sorted((r["method"], r["host"], r["path"]) for r in report["results"] if r["change"] == "newly_blocked")
    assert newly == [
        ("GET", "downloads.example.com", "/pkg/click/8.1.7/click-8.1.7.tar.gz"),
        ("GET", "downloads.example.com", "/pkg/requests/2.31.0/requests-2.31.0.tar.gz"),
        ("GET", "github.com", "/acme/widgets.git/info/refs?service=git-receive-pack"),
        ("POST", "github.com", "/acme/widgets.git/git-receive-pack"),
    ]
    assert report["counts"]["undecidable"] == 0
    unchanged = bottle("policy", "replay", str(flow["enforce_log"]), str(flow["manifest"]), cwd=flow["tmp"])
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "  newly blocked       0\n" in unchanged.stdout
    # The push itself cannot be replayed: its refs are in the body.
    assert "  undecidable         1\n" in unchanged.stdout


def test_bottle_logs_shows_the_run_as_a_table(flow):
    result = bottle("logs", str(flow["enforce_log"]), "--blocked", cwd=flow["tmp"])
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TIME", "DECISION", "STATUS", "METHOD", "HOST", "PATH", "RULE", "REASON"]
    assert len(rows) == 1 and rows[0].split()[1:6] == ["block", "403", "POST", "telemetry.example.com", "/v1/collect"]
