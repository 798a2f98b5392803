"""Git and GitHub policy end to end: the real `git` client in the agent, a real git
smart-HTTP server (`git http-backend`, image bottle-test/git) as github.com, and the
test upstream as api.github.com, all behind bottle's real egress proxy and pipelock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import bottle_env, docker, leftovers
from tests.support.certs import make_upstream_pki
from tests.support.prereq import missing

GIT_IMAGE = os.environ.get("BOTTLE_TEST_GIT_IMAGE", "bottle-test/git:latest")
UPSTREAM_IMAGE = os.environ.get("BOTTLE_TEST_UPSTREAM_IMAGE", "bottle-test/upstream:latest")


class GitWorld:
    def __init__(self, network: str, git_container: str, ca: Path) -> None:
        self.network, self.git_container, self.ca = network, git_container, ca

    def refs(self, repo: str = "acme/widgets") -> dict[str, str]:
        out = docker("exec", self.git_container, "git", "--git-dir", f"/srv/git/{repo}.git",
                     "for-each-ref", "--format=%(refname) %(objectname)").stdout.decode()
        return dict(line.split() for line in out.splitlines())

    def server_log(self) -> str:
        return docker("logs", self.git_container).stdout.decode(errors="replace")


def _wait_listening(container: str) -> None:
    deadline = time.monotonic() + 20
    while b'"listening"' not in docker("logs", container).stdout:
        assert time.monotonic() < deadline, f"{container} never started listening"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def git_world(docker_engine, tmp_path_factory):
    if docker("image", "inspect", GIT_IMAGE, check=False).returncode != 0:
        missing(f"image {GIT_IMAGE} is not built (docker build -f tests/images/git/Dockerfile "
                f"-t {GIT_IMAGE} .)")
    suffix = uuid.uuid4().hex[:6]
    network = f"bottle-test-gitnet-{suffix}"
    git_container, api_container = f"bottle-test-git-{suffix}", f"bottle-test-api-{suffix}"
    pki = make_upstream_pki(tmp_path_factory.mktemp("gitpki"), ["github.com", "api.github.com"])
    tar = subprocess.run(
        ["tar", "-C", str(pki["cert"].parent), "--transform", "s,^,certs/,", "-cf", "-", "server.pem", "server.key"],
        capture_output=True, check=True,
    ).stdout
    docker("network", "create", "--label", "dev.bottle.test=true", network)
    try:
        docker("create", "--name", git_container, "--network", network, "--network-alias", "github.com",
               "--label", "dev.bottle.test=true", GIT_IMAGE)
        docker("create", "--name", api_container, "--network", network, "--network-alias", "api.github.com",
               "--label", "dev.bottle.test=true", UPSTREAM_IMAGE, "--host", "0.0.0.0", "--port", "443",
               "--cert", "/certs/server.pem", "--key", "/certs/server.key", "--name", "api")
        for container in (git_container, api_container):
            docker("cp", "-", f"{container}:/", input=tar)
            docker("start", container)
            _wait_listening(container)
        yield GitWorld(network, git_container, pki["ca"])
    finally:
        docker("rm", "-f", git_container, api_container, check=False)
        docker("network", "rm", network, check=False)


SCRIPT = r"""
export HOME=/tmp/home; mkdir -p $HOME; cd /tmp
git config --global user.email agent@test; git config --global user.name agent
case_() { echo "== $1"; }
case_ clone-ok; git clone https://github.com/acme/widgets.git w 2>&1; echo "rc=$?"
case_ clone-other; git clone https://github.com/acme/other.git o 2>&1; echo "rc=$?"
cd w
echo change > f; git add f; git commit -qm change
case_ create-sandbox; git push origin HEAD:refs/heads/sandbox/x 2>&1; echo "rc=$?"
echo more >> f; git commit -qam more
case_ ff-sandbox; git push origin HEAD:sandbox/x 2>&1; echo "rc=$?"
git rev-parse HEAD > /tmp/pushed; echo "pushed=$(cat /tmp/pushed)"
case_ push-main; git push origin HEAD:main 2>&1; echo "rc=$?"
git commit -q --amend -m amended
case_ force-push; git push -f origin HEAD:sandbox/x 2>&1; echo "rc=$?"
case_ delete; git push origin :sandbox/x 2>&1; echo "rc=$?"
case_ rest-merge; curl -sS -w ' status=%{http_code}' -X PUT https://api.github.com/repos/acme/widgets/pulls/1/merge; echo
case_ graphql-merge; curl -sS -w ' status=%{http_code}' -H 'content-type: application/json' \
  --data '{"query": "mutation { m: mergePullRequest(input: {pullRequestId: 1}) { clientMutationId } }"}' \
  https://api.github.com/graphql; echo
case_ graphql-query; curl -sS -o /dev/null -w 'status=%{http_code}' -H 'content-type: application/json' \
  --data '{"query": "query { viewer { login } }"}' https://api.github.com/graphql; echo
case_ rest-list; curl -sS -o /dev/null -w 'status=%{http_code}' https://api.github.com/repos/acme/widgets/pulls; echo
case_ end
"""


@pytest.fixture(scope="module")
def session(git_world, pipelock_image, tmp_path_factory):
    """One bottle in bot mode runs every git and API case; tests read its sections."""
    tmp = tmp_path_factory.mktemp("gitbottle")
    (tmp / "upstream-ca.pem").write_bytes(git_world.ca.read_bytes())
    manifest = tmp / "bottle.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: gitpolicy
        egress:
          allow:
            - host: github.com
              private_upstream: true
            - host: api.github.com
              private_upstream: true
          upstream_ca: upstream-ca.pem
        git:
          repositories:
            - {{repo: github.com/acme/widgets, access: push}}
          push_branches: ["sandbox/*"]
        scanner:
          image: {pipelock_image}
        docker:
          egress_network: {git_world.network}
        """))
    before = git_world.refs()
    log = tmp / "egress.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bottle", "start", "--egress-log", str(log), str(manifest), "--", "sh", "-c", SCRIPT],
        capture_output=True, env=bottle_env(), timeout=300, stdin=subprocess.DEVNULL, cwd=tmp,
    )
    stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert "== end" in stdout, f"the agent script did not finish\nstdout:\n{stdout}\nstderr:\n{stderr}"
    bottle_id = next(line.split()[-1] for line in stderr.splitlines() if line.startswith("bottle: starting "))
    assert leftovers(bottle_id) == []
    sections = dict(re.findall(r"^== (\S+)\n(.*?)(?=^== )", stdout, re.S | re.M))
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {"sections": sections, "log": lines, "before": before, "after": git_world.refs(), "stdout": stdout,
            "server": git_world.server_log(), "stderr": stderr}


def test_authorized_clone_works(session):
    assert session["sections"]["clone-ok"].rstrip().endswith("rc=0"), session["sections"]["clone-ok"]


def test_clone_of_an_unlisted_repository_is_refused_with_the_reason(session):
    out = session["sections"]["clone-other"]
    assert "remote error: bottle: repository github.com/acme/other is not in git.repositories" in out, out
    assert "rc=0" not in out


def test_branch_creation_and_fast_forward_push_to_a_push_branch_work(session):
    assert "rc=0" in session["sections"]["create-sandbox"], (
        session["sections"]["create-sandbox"] + session["server"] + "\n".join(map(str, session["log"])) + session["stderr"])
    assert "rc=0" in session["sections"]["ff-sandbox"], session["sections"]["ff-sandbox"]
    pushed = re.search(r"pushed=([0-9a-f]{40})", session["stdout"]).group(1)
    assert session["after"]["refs/heads/sandbox/x"] == pushed


def test_push_to_main_in_bot_mode_is_refused_with_the_reason(session):
    out = session["sections"]["push-main"]
    assert "! [remote rejected] HEAD -> main (bottle: main is a protected branch)" in out, out
    assert session["after"]["refs/heads/main"] == session["before"]["refs/heads/main"]


def test_force_push_is_refused_with_the_reason(session):
    out = session["sections"]["force-push"]
    assert "[remote rejected] HEAD -> sandbox/x (bottle: force push is not allowed" in out, out
    pushed = re.search(r"pushed=([0-9a-f]{40})", session["stdout"]).group(1)
    assert session["after"]["refs/heads/sandbox/x"] == pushed


def test_branch_deletion_is_refused_with_the_reason(session):
    out = session["sections"]["delete"]
    assert "[remote rejected] sandbox/x (bottle: deleting sandbox/x is not allowed)" in out, out
    assert "refs/heads/sandbox/x" in session["after"]


def test_github_merge_is_refused_over_rest_and_graphql_and_reads_pass(session):
    rest, graphql = session["sections"]["rest-merge"], session["sections"]["graphql-merge"]
    assert "merging a pull request is not allowed" in rest and "status=403" in rest, rest
    assert "merging a pull request is not allowed (GraphQL mergePullRequest)" in graphql, graphql
    assert "status=403" in graphql
    # The stand-in API answers 404 to paths it does not know: reaching it is what counts.
    api = [line for line in session["log"] if line["host"] == "api.github.com"]
    assert [(line["path"], line["decision"], line["status"]) for line in api] == [
        ("/repos/acme/widgets/pulls/1/merge", "block", 403),
        ("/graphql", "block", 403),
        ("/graphql", "allow", 200),
        ("/repos/acme/widgets/pulls", "allow", 404),
    ]
    assert "status=404" in session["sections"]["rest-list"]


def test_every_refusal_is_logged_with_its_rule(session):
    rules = {line["rule"] for line in session["log"] if line.get("decision") == "block"}
    assert {"git.repositories", "git.protected_branches", "git.allow_force_push", "git.allow_branch_deletion",
            "github.deny.default.merge_pull_request"} <= rules, rules


BIG_PUSH = r"""
export HOME=/tmp/home; mkdir -p $HOME; cd /workspace
git config --global user.email agent@test; git config --global user.name agent
git clone -q https://github.com/acme/widgets.git big && cd big && git checkout -q -b sandbox/big
echo start > s; git add s; git commit -qm start; git push -q origin sandbox/big 2>&1; echo "created=$?"
head -c 100000000 /dev/urandom > blob.bin; git add blob.bin; git commit -qm big
git push origin sandbox/big 2>&1; echo "pushed=$?"
git rev-parse HEAD
touch /workspace/ready; while [ ! -f /workspace/go ]; do sleep 0.1; done
"""


def test_a_100_mb_fast_forward_push_streams_through_a_proxy_under_150_mb(git_world, pipelock_image, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir(mode=0o777)
    workspace.chmod(0o777)
    (tmp_path / "upstream-ca.pem").write_bytes(git_world.ca.read_bytes())
    manifest = tmp_path / "bottle.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: gitbig
        agent: {{workspace: ws}}
        egress:
          allow: [{{host: github.com, private_upstream: true}}]
          upstream_ca: upstream-ca.pem
        git:
          repositories: [{{repo: github.com/acme/widgets, access: push}}]
        scanner: {{image: {pipelock_image}}}
        docker: {{egress_network: {git_world.network}}}
        """))
    argv = [sys.executable, "-m", "bottle", "start", "--egress-log", str(tmp_path / "egress.jsonl"), str(manifest),
            "--", "sh", "-c", BIG_PUSH]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bottle_env(),
                               stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (workspace / "ready").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the push never finished"
            time.sleep(0.2)
        out = docker("ps", "--filter", "label=dev.bottle.managed=true", "--format",
                     '{{.Label "dev.bottle.role"}} {{.Names}}').stdout.decode()
        proxy = next(name for role, name in (line.split() for line in out.splitlines()) if "proxy" in role)
        status = docker("exec", proxy, "sh", "-c", "cat /proc/[0-9]*/status").stdout.decode()
        peak_kib = max(int(m) for m in re.findall(r"^VmHWM:\s+(\d+) kB", status, re.M))
        (workspace / "go").write_text("go\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    text = stdout.decode(errors="replace")
    assert "created=0" in text and "pushed=0" in text, text + stderr.decode(errors="replace")
    head = text.strip().splitlines()[-1]
    assert git_world.refs()["refs/heads/sandbox/big"] == head
    assert peak_kib < 150 * 1024, f"proxy peak RSS {peak_kib // 1024} MiB"
