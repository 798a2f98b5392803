"""Git and GitHub policy end to end: the real `git` client in the agent, a real git
smart-HTTP server (`git http-backend`, image bottle-test/git) as github.com, and the
test upstream as api.github.com, all behind bottle's real egress proxy and pipelock."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bottle.mitm.redact import loggable_path
from tests.integration.conftest import bottle_env, certs_tar, docker, leftovers, wait_listening
from tests.support.certs import make_upstream_pki
from tests.support.prereq import missing

GIT_IMAGE = os.environ.get("BOTTLE_TEST_GIT_IMAGE", "bottle-test/git:latest")
UPSTREAM_IMAGE = os.environ.get("BOTTLE_TEST_UPSTREAM_IMAGE", "bottle-test/upstream:latest")


class GitWorld:
    def __init__(self, network: str, git_container: str, ca: Path, api_container: str = "") -> None:
        self.network, self.git_container, self.ca = network, git_container, ca
        self.api_container = api_container

    def refs(self, repo: str = "acme/widgets") -> dict[str, str]:
        out = docker("exec", self.git_container, "git", "--git-dir", f"/srv/git/{repo}.git",
                     "for-each-ref", "--format=%(refname) %(objectname)").stdout.decode()
        return dict(line.split() for line in out.splitlines())

    def server_log(self) -> str:
        return docker("logs", self.git_container).stdout.decode(errors="replace")

    def api_requests(self) -> list[dict]:
        """What the stand-in api.github.com received: one JSON line per request."""
        out = docker("logs", self.api_container).stdout.decode(errors="replace")
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in events if e.get("event") == "request"]


@pytest.fixture(scope="module")
def git_world(docker_engine, tmp_path_factory):
    if docker("image", "inspect", GIT_IMAGE, check=False).returncode != 0:
        missing(f"image {GIT_IMAGE} is not built (docker build -f tests/images/git/Dockerfile "
                f"-t {GIT_IMAGE} .)")
    suffix = uuid.uuid4().hex[:6]
    network = f"bottle-test-gitnet-{suffix}"
    git_container, api_container = f"bottle-test-git-{suffix}", f"bottle-test-api-{suffix}"
    pki = make_upstream_pki(tmp_path_factory.mktemp("gitpki"), ["github.com", "api.github.com"])
    tar = certs_tar(pki)
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
            wait_listening(container)
        yield GitWorld(network, git_container, pki["ca"], api_container)
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
printf 'aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n' > aws.env
git add aws.env; git commit -qm "add aws config"
case_ secret-push; git push origin HEAD:sandbox/x 2>&1; echo "rc=$?"
git reset -q --hard HEAD~1
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


def run_bot(git_world, pipelock_image, tmp: Path, name: str, script: str, *, api_rule: str = "",
            repositories: str = "") -> dict:
    """Run one bot-mode bottle (push only to sandbox/*) with script as its agent; the
    agent's output split into its `== case` sections, and the proxy's log lines."""
    (tmp / "upstream-ca.pem").write_bytes(git_world.ca.read_bytes())
    manifest = tmp / "bottle.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: {name}
        egress:
          allow:
            - host: github.com
              private_upstream: true
            - host: api.github.com
              private_upstream: true{api_rule}
          upstream_ca: upstream-ca.pem
        git:
          repositories:
            - {{repo: github.com/acme/widgets, access: push}}{repositories}
          push_branches: ["sandbox/*"]
        scanner:
          image: {pipelock_image}
        docker:
          egress_network: {git_world.network}
        """))
    log = tmp / "egress.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bottle", "start", "--egress-log", str(log), str(manifest), "--", "sh", "-c", script],
        capture_output=True, env=bottle_env(), timeout=300, stdin=subprocess.DEVNULL, cwd=tmp,
    )
    stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert "== end" in stdout, f"the agent script did not finish\nstdout:\n{stdout}\nstderr:\n{stderr}"
    bottle_id = next(line.split()[-1] for line in stderr.splitlines() if line.startswith("bottle: starting "))
    assert leftovers(bottle_id) == []
    return {"sections": dict(re.findall(r"^== (\S+)\n(.*?)(?=^== )", stdout, re.S | re.M)), "stdout": stdout,
            "stderr": stderr,
            "log": [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]}


@pytest.fixture(scope="module")
def session(git_world, pipelock_image, tmp_path_factory):
    """One bottle in bot mode runs every git and API case; tests read its sections."""
    before = git_world.refs()
    run = run_bot(git_world, pipelock_image, tmp_path_factory.mktemp("gitbottle"), "gitpolicy", SCRIPT)
    return {**run, "before": before, "after": git_world.refs(), "server": git_world.server_log()}


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


def test_a_push_adding_an_aws_key_pair_is_refused_naming_the_file_and_the_finding(session):
    out = session["sections"]["secret-push"]
    assert ("! [remote rejected] HEAD -> sandbox/x (bottle: secret in aws.env "
            "(DLP-AWS Access ID, DLP-AWS Secret Key))") in out, out
    assert "rc=0" not in out
    pushed = re.search(r"pushed=([0-9a-f]{40})", session["stdout"]).group(1)
    assert session["after"]["refs/heads/sandbox/x"] == pushed
    refused = [line for line in session["log"] if line.get("scanner")]
    assert [(line["path"], line["decision"], line["rule"], line["scanner"]) for line in refused] == [
        ("/acme/widgets.git/git-receive-pack", "block", "git.repositories[0]", ["DLP-AWS Access ID", "DLP-AWS Secret Key"])]
    assert "AKIA" not in json.dumps(session["log"])


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


# -- GitHub API writes around the git push policy ------------------------------------------

HEAD_OID = "0123456789abcdef0123456789abcdef01234567"
COMMIT_ON_BRANCH = ("mutation ($input: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $input) "
                    "{ commit { url } } }")


def _commit(branch: dict) -> dict:
    return {"query": COMMIT_ON_BRANCH, "variables": {"input": {
        "branch": branch, "message": {"headline": "bot commit"}, "expectedHeadOid": HEAD_OID,
        "fileChanges": {"additions": [{"path": "notes.md", "contents": "aGVsbG8="}]}}}}


def _contents(**branch) -> dict:
    return {"message": "bot edit", "content": "aGVsbG8=", **branch}


# (case, method, path, body, extra header, expected status, rule id, reason); a body is JSON
# unless it is bytes. Every refused case must never reach the stand-in api.github.com.
API_CASES = [
    ("contents-bot-branch", "PUT", "/repos/acme/widgets/contents/notes.md", _contents(branch="sandbox/api"), None,
     200, "egress.allow[1]", ""),
    ("graphql-commit-bot-branch", "POST", "/graphql",
     _commit({"repositoryNameWithOwner": "acme/widgets", "branchName": "sandbox/api"}), None, 200, "egress.allow[1]", ""),
    ("issue-on-a-listed-repository", "POST", "/repos/acme/widgets/issues", {"title": "t"}, None,
     200, "egress.allow[1]", ""),
    ("contents-protected", "PUT", "/repos/acme/widgets/contents/notes.md", _contents(branch="main"), None,
     403, "git.protected_branches", "GitHub: main is a protected branch (contents API)"),
    ("contents-delete-protected", "DELETE", "/repos/acme/widgets/contents/notes.md",
     {"message": "m", "sha": HEAD_OID, "branch": "master"}, None,
     403, "git.protected_branches", "GitHub: master is a protected branch (contents API)"),
    ("contents-outside-push-branches", "PUT", "/repos/acme/widgets/contents/notes.md", _contents(branch="feature"),
     None, 403, "git.push_branches", "GitHub: feature is not in git.push_branches (sandbox/*) (contents API)"),
    ("contents-default-branch", "PUT", "/repos/acme/widgets/contents/notes.md", _contents(), None,
     403, "github.branch_unknown", "GitHub: contents API: without branch the write goes to the default branch, "
     "which bottle cannot know; name the branch"),
    ("contents-two-branch-keys", "PUT", "/repos/acme/widgets/contents/notes.md",
     b'{"message": "m", "content": "aGVsbG8=", "branch": "sandbox/api", "branch": "main"}', None,
     403, "github.body", "GitHub: contents API: a body that cannot be read is refused (key 'branch' given twice)"),
    ("ref-create-protected", "POST", "/repos/acme/widgets/git/refs", {"ref": "refs/heads/master", "sha": HEAD_OID},
     None, 403, "git.protected_branches", "GitHub: master is a protected branch (git/refs)"),
    ("ref-create-tag", "POST", "/repos/acme/widgets/git/refs", {"ref": "refs/tags/v9", "sha": HEAD_OID},
     None, 403, "git.push_branches", "GitHub: refs/tags/v9 is not in git.push_branches (sandbox/*) (git/refs)"),
    ("blob-in-a-read-repository", "POST", "/repos/acme/docs/git/blobs", {"content": "aGVsbG8="}, None,
     403, "git.repositories[1]", "GitHub: github.com/acme/docs is read-only (access: read)"),
    ("tree-in-an-unlisted-repository", "POST", "/repos/acme/other/git/trees", {"tree": []}, None,
     403, "git.repositories", "GitHub: repository github.com/acme/other is not in git.repositories (read-only "
     "through the API)"),
    ("update-pull-request-branch", "PUT", "/repos/acme/widgets/pulls/1/update-branch", {}, None,
     403, "github.branch_unknown", "GitHub: updating a pull request's branch writes a branch bottle cannot name "
     "(the pull request's head)"),
    ("graphql-commit-protected", "POST", "/graphql",
     _commit({"repositoryNameWithOwner": "acme/widgets", "branchName": "main"}), None,
     403, "git.protected_branches", "GitHub: main is a protected branch (GraphQL createCommitOnBranch)"),
    ("graphql-commit-node-id", "POST", "/graphql", _commit({"id": "MDM6UmVmMTpyZWZzL2hlYWRzL21haW4="}), None,
     403, "github.repository_unknown", "GitHub: createCommitOnBranch names its branch by node id, which bottle "
     "cannot match to git.repositories (give repositoryNameWithOwner and branchName)"),
    ("graphql-create-ref", "POST", "/graphql",
     {"query": 'mutation { createRef(input: {repositoryId: "R_1", name: "refs/heads/sandbox/z", '
               f'oid: "{HEAD_OID}"}}) {{ ref {{ name }} }} }}'}, None,
     403, "github.repository_unknown", "GitHub: createRef names its repository by node id, which bottle cannot "
     "match to git.repositories (use POST /repos/{owner}/{repo}/git/refs)"),
    ("graphql-two-query-keys", "POST", "/graphql",
     b'{"query": "mutation { m: mergePullRequest(input: {pullRequestId: \\"P_1\\"}) { clientMutationId } }", '
     b'"query": "query { viewer { login } }"}', None,
     403, "github.graphql", "GitHub: a GraphQL request that cannot be read is refused (key 'query' given twice)"),
    ("repositories-id-alias", "PUT", "/repositories/1296269/pulls/1/merge", {}, None,
     403, "github.deny.default.merge_pull_request", "GitHub: merging a pull request is not allowed"),
    ("method-override", "POST", "/repos/acme/widgets/pulls/1/merge", {}, "X-HTTP-Method-Override: PUT",
     403, "github.method_override", "GitHub: the x-http-method-override header is refused (bottle checks the "
     "request's own method)"),
    ("visibility", "PATCH", "/repos/acme/widgets", {"private": False}, None,
     403, "github.deny.default.repository_settings", "GitHub: changing repository settings or visibility is not allowed"),
    ("ruleset", "POST", "/repos/acme/widgets/rulesets", {"name": "r"}, None,
     403, "github.deny.default.rulesets", "GitHub: changing rulesets is not allowed"),
    ("deploy-key", "POST", "/repos/acme/widgets/keys", {"key": "ssh-ed25519 AAAA", "read_only": False}, None,
     403, "github.deny.default.deploy_keys", "GitHub: adding or removing deploy keys is not allowed"),
    ("user-key", "POST", "/user/keys", {"key": "ssh-ed25519 AAAA"}, None,
     403, "github.deny.default.user_credentials", "GitHub: changing the account's keys or e-mail addresses is not allowed"),
    ("webhook", "POST", "/repos/acme/widgets/hooks", {"config": {"url": "https://hooks.example.com/"}}, None,
     403, "github.deny.default.webhooks", "GitHub: creating or changing webhooks is not allowed"),
    ("collaborator", "PUT", "/repos/acme/widgets/collaborators/mallory", {"permission": "admin"}, None,
     403, "github.deny.default.collaborators", "GitHub: changing collaborators, members, teams or invitations is not "
     "allowed"),
    ("invitation", "PATCH", "/user/repository_invitations/7", {}, None,
     403, "github.deny.default.collaborators", "GitHub: changing collaborators, members, teams or invitations is not "
     "allowed"),
    ("actions-secret", "PUT", "/repos/acme/widgets/actions/secrets/DEPLOY", {"encrypted_value": "eA==", "key_id": "1"},
     None, 403, "github.deny.default.actions_secrets", "GitHub: changing Actions, Dependabot or Codespaces secrets or "
     "variables is not allowed"),
    ("environment-secret-by-id", "PUT", "/repositories/1296269/environments/prod/secrets/DEPLOY",
     {"encrypted_value": "eA==", "key_id": "1"}, None, 403, "github.deny.default.actions_secrets",
     "GitHub: changing Actions, Dependabot or Codespaces secrets or variables is not allowed"),
    ("runner-token", "POST", "/repos/acme/widgets/actions/runners/registration-token", {}, None,
     403, "github.deny.default.actions_runners", "GitHub: registering or changing self-hosted runners is not allowed"),
    ("environment", "PUT", "/repos/acme/widgets/environments/prod", {"wait_timer": 0}, None,
     403, "github.deny.default.environments", "GitHub: changing deployment environments is not allowed"),
    ("approve-run", "POST", "/repos/acme/widgets/actions/runs/5/approve", {}, None,
     403, "github.deny.default.deployment_approval", "GitHub: approving workflow runs or deployments is not allowed"),
    ("workflow-dispatch", "POST", "/repos/acme/widgets/actions/workflows/ci.yml/dispatches", {"ref": "main"}, None,
     403, "github.deny.default.workflow_dispatch", "GitHub: dispatching, enabling or disabling workflows is not allowed"),
    ("repository-dispatch", "POST", "/repos/acme/widgets/dispatches", {"event_type": "deploy"}, None,
     403, "github.deny.default.workflow_dispatch", "GitHub: dispatching, enabling or disabling workflows is not allowed"),
    ("gist", "POST", "/gists", {"files": {"a.txt": {"content": "x"}}, "public": True}, None,
     403, "github.deny.default.gists", "GitHub: creating or changing gists is not allowed"),
    ("organization-settings", "PATCH", "/orgs/acme", {"default_repository_permission": "admin"}, None,
     403, "github.deny.default.organization_settings", "GitHub: changing organization or enterprise settings is not "
     "allowed"),
    ("template-copy", "POST", "/repos/acme/widgets/generate", {"name": "copy", "private": False}, None,
     403, "github.deny.default.template_copy", "GitHub: creating a repository from a template is not allowed"),
    ("publish-release", "PATCH", "/repos/acme/widgets/releases/3", {"draft": False}, None,
     403, "github.deny.default.update_release", "GitHub: publishing or changing a release is not allowed"),
    ("push-protection-bypass", "POST", "/repos/acme/widgets/secret-scanning/push-protection-bypasses",
     {"reason": "false_positive", "placeholder_id": "x"}, None, 403, "github.deny.default.push_protection_bypass",
     "GitHub: bypassing secret scanning push protection is not allowed"),
]


def _api_script() -> str:
    lines = ["cd /tmp"]
    for case, method, path, body, header, *_ in API_CASES:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        extra = f" -H '{header}'" if header else ""
        lines += [f"echo '== {case}'",
                  f"echo {base64.b64encode(raw).decode()} | base64 -d > body.json",
                  f"curl -sS -X {method} -H 'x-bottle-case: {case}' -H 'content-type: application/json'{extra} "
                  f"--data-binary @body.json -w '\\nstatus=%{{http_code}}' https://api.github.com{path}; echo"]
    return "\n".join(lines + ["echo '== end'", ""])


@pytest.fixture(scope="module")
def api_session(git_world, pipelock_image, tmp_path_factory):
    """One bot-mode bottle sends every API case; api.github.com's rule does not scan bodies,
    so the branch writes prove bottle buffers and reads what it must decide on anyway."""
    run = run_bot(git_world, pipelock_image, tmp_path_factory.mktemp("apibottle"), "githubapi", _api_script(),
                  api_rule="\n              scan_body: false",
                  repositories="\n            - {repo: github.com/acme/docs, access: read}")
    received: dict[str, list[dict]] = {}
    for request in git_world.api_requests():
        if case := request["headers"].get("x-bottle-case"):
            received.setdefault(case, []).append(request)
    return {"sections": run["sections"], "received": received,
            "log": [line for line in run["log"] if line.get("host") == "api.github.com"]}


@pytest.mark.parametrize(("case", "method", "path", "body", "header", "status", "rule", "reason"), API_CASES,
                         ids=[c[0] for c in API_CASES])
def test_github_api_write(api_session, case, method, path, body, header, status, rule, reason):
    """What the agent sees, what the log says, and what reached api.github.com."""
    out = api_session["sections"][case]
    index = [c[0] for c in API_CASES].index(case)
    line = api_session["log"][index]
    assert (line["method"], line["path"], line["status"], line["rule"], line["reason"]) == (
        method, loggable_path(path), status, rule, reason), out
    assert out.rstrip().endswith(f"status={status}"), out
    received = api_session["received"].get(case, [])
    if status == 403:
        assert json.loads(out.rsplit("\nstatus=", 1)[0]) == {"message": f"bottle: blocked: {reason}"}
        assert line["decision"] == "block"
        assert received == [], f"a refused request reached api.github.com: {received}"
    else:
        assert line["decision"] == "allow"
        assert [(r["method"], r["path"]) for r in received] == [(method, path)]
        sent = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert received[0]["body_text"] == sent.decode(), "the write did not arrive whole"


def test_every_github_api_case_was_logged_in_order(api_session):
    assert [(line["method"], line["path"]) for line in api_session["log"]] == [
        (c[1], loggable_path(c[2])) for c in API_CASES]


BIG_PUSH = r"""
export HOME=/tmp/home; mkdir -p $HOME; cd /workspace
git config --global user.email agent@test; git config --global user.name agent
git clone -q https://github.com/acme/widgets.git big && cd big && git checkout -q -b sandbox/big
echo start > s; git add s; git commit -qm start; git push -q origin sandbox/big 2>&1; echo "created=$?"
head -c 100000000 /dev/urandom > blob.bin; git add blob.bin; git commit -qm big
start=$(date +%s%N); git push origin sandbox/big 2>&1; echo "pushed=$?"; echo "push_ms=$(( ($(date +%s%N) - start) / 1000000 ))"
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
        # This bottle's proxy only: other bottles may run on the same engine.
        proxy = docker("ps", "--filter", "label=dev.bottle.managed=true", "--filter", "label=dev.bottle.role=proxy",
                       "--filter", "name=bottle-gitbig-", "--format", "{{.Names}}").stdout.decode().split()[0]
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
    print(f"100 MB push: proxy peak RSS {peak_kib // 1024} MiB, {re.search(r'push_ms=(\d+)', text).group(1)} ms")
    assert peak_kib < 150 * 1024, f"proxy peak RSS {peak_kib // 1024} MiB"
