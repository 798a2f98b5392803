"""Git smart-HTTP policy: pkt-lines, ref rules, ancestry from the pack, the push report."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zlib

import pytest

from bottle.mitm import git
from bottle.mitm.git import ZERO_OID, PktLineError, PushInspector, RefUpdate
from bottle.mitm.policy import GitPolicy, GitRepository

A, B, C = "a" * 40, "b" * 40, "c" * 40
TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def policy(**changes) -> GitPolicy:
    values = dict(
        repositories=(GitRepository(id="git.repositories[0]", host="github.com", path="acme/widgets", access="push"),
                      GitRepository(id="git.repositories[1]", host="gitlab.example.com", path="group/sub/tool",
                                    access="read")),
        protected_branches=("main", "master"), push_branches=None,
        allow_force_push=False, allow_branch_deletion=False,
    )
    values.update(changes)
    return GitPolicy(**values)


def commands(*lines: str, caps: str = "report-status side-band-64k agent=git/2.39") -> bytes:
    out = b""
    for i, line in enumerate(lines):
        payload = line.encode() + (b"\0" + caps.encode() if i == 0 else b"") + b"\n"
        out += git.pkt(payload)
    return out + b"0000"


def commit(parents: tuple[str, ...], message: str = "m") -> tuple[bytes, str]:
    content = f"tree {TREE}\n" + "".join(f"parent {p}\n" for p in parents)
    content += f"author a <a@b> 0 +0000\ncommitter a <a@b> 0 +0000\n\n{message}\n"
    data = content.encode()
    return data, hashlib.sha1(b"commit %d\0" % len(data) + data).hexdigest()


def pack(*objects: tuple[int, bytes]) -> bytes:
    out = b"PACK" + (2).to_bytes(4, "big") + len(objects).to_bytes(4, "big")
    for kind, data in objects:
        size = len(data)
        head = bytearray([(kind << 4) | (size & 15)])
        size >>= 4
        while size:
            head[-1] |= 0x80
            head.append(size & 0x7F)
            size >>= 7
        out += bytes(head) + zlib.compress(data)
    return out + hashlib.sha1(out).digest()


# -- pkt-lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0000", ("flush", 4)),
        (b"0001", ("delim", 4)),
        (b"0002", ("response-end", 4)),
        (b"0009hello", (b"hello", 9)),
        (b"0009hell", None),
        (b"00", None),
    ],
)
def test_pkt_line_reader(data, expected):
    assert git.read_pkt(data, 0) == expected


@pytest.mark.parametrize("data", [b"zzzz", b"0003", b"-001"])
def test_malformed_pkt_length_is_an_error(data):
    with pytest.raises(PktLineError):
        git.read_pkt(data, 0)


def test_commands_with_capabilities_and_several_refs():
    body = commands(f"{A} {B} refs/heads/sandbox/x", f"{ZERO_OID} {C} refs/heads/bottle/y") + b"PACK"
    parsed = git.parse_commands(body)
    assert parsed.updates == (RefUpdate(A, B, "refs/heads/sandbox/x"), RefUpdate(ZERO_OID, C, "refs/heads/bottle/y"))
    assert "report-status" in parsed.capabilities and parsed.side_band
    assert body[parsed.end:] == b"PACK"


def test_commands_are_incomplete_until_the_flush():
    body = commands(f"{A} {B} refs/heads/x")
    assert git.parse_commands(body[:-4]) is None
    assert git.parse_commands(body[:10]) is None


def test_push_options_section_is_skipped():
    body = commands(f"{A} {B} refs/heads/x", caps="report-status push-options") + git.pkt(b"ci.skip\n") + b"0000PACK"
    parsed = git.parse_commands(body)
    assert body[parsed.end:] == b"PACK"


def test_shallow_lines_before_commands_are_skipped():
    body = git.pkt(f"shallow {C}".encode()) + commands(f"{A} {B} refs/heads/x")
    assert git.parse_commands(body).updates == (RefUpdate(A, B, "refs/heads/x"),)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(git.pkt(f"{A} {B} refs/heads/x\0report-status\n".encode()) + b"0001" + b"0000", id="delim"),
        pytest.param(git.pkt(b"hello world\n") + b"0000", id="not-an-update"),
        pytest.param(git.pkt(f"{A} {B} HEAD\n".encode()) + b"0000", id="not-a-ref"),
        pytest.param(git.pkt(f"{ZERO_OID} {ZERO_OID} refs/heads/x\n".encode()) + b"0000", id="two-zero-ids"),
        pytest.param(commands(f"{A} {B} refs/heads/x", f"{A} {B} refs/heads/y\0caps"), id="caps-twice"),
        pytest.param(git.pkt(f"{A[:39]}g {B} refs/heads/x\n".encode()) + b"0000", id="bad-oid"),
    ],
)
def test_malformed_commands_are_refused(body):
    with pytest.raises(PktLineError):
        git.parse_commands(body)


# -- requests and ref rules ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "allowed", "rule"),
    [
        ("github.com", "/acme/widgets.git/info/refs?service=git-upload-pack", True, "git.repositories[0]"),
        ("github.com", "/Acme/Widgets/info/refs?service=git-receive-pack", True, "git.repositories[0]"),
        ("github.com", "/acme/widgets.git/git-upload-pack", True, "git.repositories[0]"),
        ("github.com", "/acme/widgets.git/git-receive-pack", True, "git.repositories[0]"),
        ("github.com", "/acme/other.git/info/refs?service=git-upload-pack", False, "git.repositories"),
        ("github.com", "/acme/other/git-upload-pack", False, "git.repositories"),
        ("github.com", "/acme/other.git/info/refs", False, "git.repositories"),
        ("github.com", "/acme/widgets/../other.git/info/refs", False, "git.repositories"),
        ("gitlab.example.com", "/group/sub/tool.git/info/refs?service=git-upload-pack", True, "git.repositories[1]"),
        ("gitlab.example.com", "/group/sub/tool.git/info/refs?service=git-receive-pack", False, "git.repositories[1]"),
        ("gitlab.example.com", "/group/sub/tool.git/git-receive-pack", False, "git.repositories[1]"),
    ],
)
def test_repository_allowlist(host, path, allowed, rule):
    verdict = git.check_request(policy(), host, path)
    assert (verdict.allowed, verdict.rule_id) == (allowed, rule)


def test_requests_git_policy_does_not_govern():
    assert git.check_request(policy(), "github.com", "/acme/widgets/pulls") is None
    assert git.check_request(policy(), "example.com", "/x/y.git/info/refs") is None
    assert git.check_request(None, "github.com", "/x/y.git/info/refs") is None


def test_refusal_reasons_name_the_repository():
    assert git.check_request(policy(), "github.com", "/acme/other.git/info/refs?service=git-upload-pack").reason == (
        "repository github.com/acme/other is not in git.repositories")
    assert git.check_request(policy(), "gitlab.example.com", "/group/sub/tool.git/git-receive-pack").reason == (
        "gitlab.example.com/group/sub/tool is read-only (access: read)")


@pytest.mark.parametrize(
    ("changes", "update", "expected"),
    [
        ({}, RefUpdate(A, B, "refs/heads/feature"), None),
        ({}, RefUpdate(A, B, "refs/heads/main"), ("git.protected_branches", "bottle: main is a protected branch")),
        ({}, RefUpdate(ZERO_OID, B, "refs/heads/master"),
         ("git.protected_branches", "bottle: master is a protected branch")),
        ({}, RefUpdate(A, ZERO_OID, "refs/heads/feature"),
         ("git.allow_branch_deletion", "bottle: deleting feature is not allowed")),
        ({"allow_branch_deletion": True}, RefUpdate(A, ZERO_OID, "refs/heads/feature"), None),
        ({"allow_branch_deletion": True}, RefUpdate(A, ZERO_OID, "refs/heads/main"),
         ("git.protected_branches", "bottle: main is a protected branch")),
        ({"push_branches": ("sandbox/*", "bottle/*")}, RefUpdate(A, B, "refs/heads/sandbox/a/b"), None),
        ({"push_branches": ("sandbox/*", "bottle/*")}, RefUpdate(A, B, "refs/heads/feature"),
         ("git.push_branches", "bottle: feature is not in git.push_branches (sandbox/*, bottle/*)")),
        ({"push_branches": ("sandbox/*",)}, RefUpdate(ZERO_OID, B, "refs/tags/sandbox/v1"),
         ("git.push_branches", "bottle: refs/tags/sandbox/v1 is not in git.push_branches (sandbox/*)")),
        ({"push_branches": ("refs/tags/*",)}, RefUpdate(ZERO_OID, B, "refs/tags/v1"), None),
    ],
)
def test_ref_rules(changes, update, expected):
    assert git.check_update(policy(**changes), update) == expected


# -- ancestry --------------------------------------------------------------------------


def test_fast_forward_is_proven_by_a_chain_of_commits_in_the_pack():
    c1, o1 = commit((A,))
    c2, o2 = commit((o1,))
    walker = git.PackWalker()
    walker.feed(pack((1, c2), (1, c1), (3, b"a blob")))
    assert walker.done
    assert git.proves_fast_forward(walker.commits, A, o2)
    assert not git.proves_fast_forward(walker.commits, B, o2)


def test_merge_commit_proves_either_parent():
    c, o = commit((B, A))
    assert git.proves_fast_forward({o: (B, A)}, A, o)


def test_a_commit_claiming_a_parent_is_believed_only_under_its_real_id():
    c, real = commit((A,))
    walker = git.PackWalker()
    walker.feed(pack((1, c)))
    assert list(walker.commits) == [real]


def test_pack_parses_across_any_chunking():
    c1, o1 = commit((A,), "x" * 5000)
    blob = bytes(range(256)) * 1000
    data = pack((1, c1), (3, blob), (2, b"100644 f\0" + b"\1" * 20))
    walker = git.PackWalker()
    for i in range(0, len(data), 7):
        walker.feed(data[i:i + 7])
    assert walker.done and walker.commits == {o1: (A,)}


@pytest.mark.parametrize(
    "data",
    [b"JUNK" + b"\0" * 8, pack((1, b"x"))[:12] + b"\x15" + b"not zlib at all", pack((3, b"abc")) + b"extra" * 10],
)
def test_corrupt_pack_is_an_error(data):
    with pytest.raises(git.PackError):
        git.PackWalker().feed(data)


def test_real_git_pack_proves_fast_forward(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True,  # noqa: E731
                                    env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                                         "GIT_COMMITTER_EMAIL": "a@b", "HOME": str(tmp_path)}).stdout
    run("init", "-q")
    for i in range(3):
        (tmp_path / "f").write_text(f"{i}\n" * 1000)
        run("add", "f")
        run("commit", "-qm", f"c{i}")
    old, new = run("rev-parse", "HEAD~2").decode().strip(), run("rev-parse", "HEAD").decode().strip()
    data = subprocess.run(["git", "-C", str(tmp_path), "pack-objects", "--stdout", "--revs", "--thin"],
                          input=f"{new}\n^{old}\n".encode(), check=True, capture_output=True).stdout
    inspector = PushInspector(policy())
    body = commands(f"{old} {new} refs/heads/feature") + data
    for i in range(0, len(body), 100):
        inspector.feed(body[i:i + 100])
    assert inspector.decided and not inspector.refusals


# -- the push inspector ----------------------------------------------------------------


def feed_all(inspector: PushInspector, body: bytes) -> PushInspector:
    inspector.feed(body)
    inspector.finish()
    return inspector


def test_fast_forward_push_is_decided_as_soon_as_it_is_proven():
    c1, o1 = commit((A,))
    inspector = PushInspector(policy())
    inspector.feed(commands(f"{A} {o1} refs/heads/feature") + pack((1, c1), (3, b"b" * 100))[:-30])
    assert inspector.decided and not inspector.refusals


def test_unproven_update_is_refused_as_a_force_push():
    c1, o1 = commit((B,))
    inspector = feed_all(PushInspector(policy()), commands(f"{A} {o1} refs/heads/feature") + pack((1, c1)))
    assert inspector.refusals == {"refs/heads/feature": (
        "git.allow_force_push", "bottle: force push is not allowed (could not prove feature fast-forwards)")}


def test_force_push_allowed_needs_no_proof():
    inspector = PushInspector(policy(allow_force_push=True))
    inspector.feed(commands(f"{A} {B} refs/heads/feature"))
    assert inspector.decided and not inspector.refusals


def test_creation_needs_no_ancestry_and_deletion_has_no_pack():
    inspector = PushInspector(policy(allow_branch_deletion=True))
    inspector.feed(commands(f"{ZERO_OID} {B} refs/heads/new", f"{A} {ZERO_OID} refs/heads/old"))
    assert inspector.decided and not inspector.refusals


def test_pushing_an_existing_commit_without_a_pack_is_unproven():
    inspector = feed_all(PushInspector(policy()), commands(f"{A} {B} refs/heads/feature") + pack())
    assert inspector.refusals["refs/heads/feature"][0] == "git.allow_force_push"


def test_one_refused_ref_refuses_the_whole_push():
    inspector = PushInspector(policy())
    inspector.feed(commands(f"{ZERO_OID} {B} refs/heads/ok", f"{A} {B} refs/heads/main"))
    assert inspector.decided
    assert inspector.refusals == {
        "refs/heads/main": ("git.protected_branches", "bottle: main is a protected branch"),
        "refs/heads/ok": ("git.push", "bottle: push refused because another ref was refused"),
    }
    assert inspector.first_refusal == ("git.protected_branches", "bottle: main is a protected branch")


def test_push_that_cannot_be_proven_within_the_hold_limit_is_refused():
    inspector = PushInspector(policy(), max_held=1024 * 1024)
    inspector.feed(commands(f"{A} {B} refs/heads/feature") + pack((3, os.urandom(2 * 1024 * 1024))))
    assert inspector.decided and inspector.refusals["refs/heads/feature"][0] == "git.allow_force_push"
    assert len(inspector.held) == 0


def test_malformed_push_is_refused():
    inspector = feed_all(PushInspector(policy()), commands(f"{A} {B} refs/heads/feature") + b"GARBAGE" * 3)
    assert inspector.refusals["refs/heads/feature"][0] == "git.push"
    assert "could not read the push" in inspector.refusals["refs/heads/feature"][1]


def test_truncated_commands_are_refused_at_the_end():
    inspector = feed_all(PushInspector(policy()), b"00a0" + b"x" * 10)
    assert inspector.refusals == {"": ("git.push", "bottle: could not read the push (incomplete commands)")}


# -- the report ------------------------------------------------------------------------


def test_report_without_side_band_is_byte_exact():
    assert git.receive_pack_report(
        [("refs/heads/main", "bottle: main is a protected branch"), ("refs/heads/x", None)], side_band=False
    ) == (b"000eunpack ok\n"
          b"003ang refs/heads/main bottle: main is a protected branch\n"
          b"0014ok refs/heads/x\n"
          b"0000")


def test_report_with_side_band_wraps_the_report_in_band_one():
    inner = b"000eunpack ok\n003ang refs/heads/main bottle: main is a protected branch\n0000"
    assert git.receive_pack_report([("refs/heads/main", "bottle: main is a protected branch")], side_band=True) == (
        b"%04x" % (len(inner) + 5) + b"\x01" + inner + b"0000")


def test_inspector_report_uses_the_clients_side_band_choice():
    inspector = PushInspector(policy())
    inspector.feed(commands(f"{A} {B} refs/heads/main", caps="report-status"))
    assert inspector.report() == b"000eunpack ok\n003ang refs/heads/main bottle: main is a protected branch\n0000"


def test_a_lone_flush_is_gits_auth_probe_and_passes():
    assert git.parse_commands(b"0000").updates == ()
    inspector = PushInspector(policy())
    inspector.feed(b"0000")
    assert not inspector.decided
    inspector.finish()
    assert inspector.decided and not inspector.refusals


def test_data_after_an_empty_command_list_is_refused():
    inspector = feed_all(PushInspector(policy()), b"0000PACK")
    assert inspector.refusals == {"": ("git.push", "bottle: could not read the push (data after an empty command list)")}
