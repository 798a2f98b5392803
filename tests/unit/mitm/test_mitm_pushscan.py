"""A push is scanned for what it adds: real packs from the real `git pack-objects`, thin
as `git push` sends them, through the proxy's addon chain, with a scanner that answers
in pipelock's shape for its AWS patterns (the real pipelock: tests/integration)."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest

from bottle.mitm import git, pushscan
from bottle.mitm.pack import OFS_DELTA, REF_DELTA, PackError, PackObject, PackWalker
from bottle.mitm.packtext import OVERLAP, PIECE_BYTES, PackText
from gitrepo import AWS_ID, AWS_PAIR, UNAVAILABLE, PatternScanner, Repo, object_kinds, seed_lines
from mitm_fixture import POLICY
from test_mitm_addon import make_addon, make_flow
from test_mitm_addon_git import GIT, GITHUB, RULES_WITH_API, drive_push
from test_mitm_git import A, commands, commit, pack

ZERO = git.ZERO_OID
SECRET_RULES = "(DLP-AWS Access ID, DLP-AWS Secret Key)"
OTHER = "bottle: push refused because another ref was refused"


class ErrorAfter(PatternScanner):
    """Answers the pipeline's scan of the request, then fails like an unreachable pipelock."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    async def scan_text(self, text: str):
        if len(self.texts) >= self.calls:
            raise UNAVAILABLE
        return await super().scan_text(text)


def chain(fake=None, **changes):
    return make_addon(fake or PatternScanner(), git=changes.pop("git", GIT), github=GITHUB, allow=RULES_WITH_API,
                      routes=[], **changes)


class Pushed:
    def __init__(self, flow, before_end: bytes, sent: bytes, lines: list[dict]) -> None:
        self.flow, self.before_end, self.sent, self.lines = flow, before_end, sent, lines

    @property
    def report(self) -> list[str]:
        """The receive-pack report git reads (side-band unwrapped), one line each."""
        inner, pos = b"", 0
        while (item := git.read_pkt(self.flow.response.content, pos)) is not None:
            payload, pos = item
            if isinstance(payload, bytes):
                inner += payload[1:]
        out, pos = [], 0
        while (item := git.read_pkt(inner, pos)) is not None:
            payload, pos = item
            if isinstance(payload, bytes):
                out.append(payload.decode().rstrip("\n"))
        return out

    @property
    def log(self) -> dict:
        return self.lines[-1]


def push(body: bytes, fake=None, chunk: int = 4096, **changes) -> Pushed:
    addon, lines = chain(fake, **changes)
    f, before_end, sent = drive_push(addon, body, chunk=chunk)
    assert f.metadata["bottle"].push is not None, f.response.content
    return Pushed(f, before_end, sent, lines)


@pytest.fixture
def repo(tmp_path):
    r = Repo(tmp_path / "repo")
    r.commit("seed", **{"README.md": "# widgets\n", "config.txt": seed_lines(), "src__lib__code.py": seed_lines(50)})
    return r


def update(repo: Repo, old: str, ref: str = "refs/heads/sandbox/x", thin: bool = True) -> bytes:
    return commands(f"{old} {repo.head()} {ref}") + repo.pack(repo.head(), old, thin=thin)


# -- what is refused, and what git prints ------------------------------------------------


def test_a_new_file_with_an_aws_key_pair_is_refused_naming_the_file(repo):
    old = repo.head()
    repo.commit("add config", **{"src__lib__aws.env": AWS_PAIR})
    pushed = push(update(repo, old))
    assert pushed.report[0] == "unpack ok"
    ng = pushed.report[1]
    assert ng.startswith("ng refs/heads/sandbox/x bottle: secret in ") and ng.endswith(f"lib/aws.env {SECRET_RULES}"), ng
    assert (pushed.log["decision"], pushed.log["rule"], pushed.log["scanner"]) == (
        "block", "git.repositories[0]", ["DLP-AWS Access ID", "DLP-AWS Secret Key"])
    assert pushed.log["reason"] == ng.split(" ", 2)[2]


@pytest.mark.parametrize("added, named", [
    # git sends the root tree as a delta; the new entry's mode is copied from the entry it
    # now precedes ("100644 "), so the name might have lost its beginning: `*`.
    ("aws.env", ".../*aws.env"),
    # a new directory's entry ("40000 b") shares no prefix with its neighbour: whole name.
    ("b__aws.env", ".../b/aws.env"),
])
def test_where_the_root_tree_is_a_delta_the_name_comes_from_its_inserted_bytes(tmp_path, added, named):
    repo = Repo(tmp_path / "wide")
    old = repo.commit("seed", **{"README.md": "# w\n", "config.txt": seed_lines(),
                                 **{f"m{i}.txt": f"file {i}\n" for i in range(30)}})
    repo.commit("add", **{added: AWS_PAIR})
    body = update(repo, old)
    assert object_kinds(repo.pack(repo.head(), old))[1] == REF_DELTA  # the root tree, after the commit
    assert push(body).report[1] == f"ng refs/heads/sandbox/x bottle: secret in {named} {SECRET_RULES}"


def test_in_a_new_repository_the_whole_path_is_named(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{"README.md": "# widgets\n", "src__lib__aws.env": AWS_PAIR})
    pushed = push(commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head()))
    assert pushed.report == ["unpack ok", f"ng refs/heads/sandbox/x bottle: secret in src/lib/aws.env {SECRET_RULES}"]
    assert AWS_ID.encode() not in pushed.sent


def test_a_secret_in_a_file_name_is_refused_without_printing_it(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{f"{AWS_ID}.txt": "harmless\n"})
    pushed = push(commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head()))
    assert pushed.report[1] == "ng refs/heads/sandbox/x bottle: secret in a file name at the top level (DLP-AWS Access ID)"
    assert AWS_ID not in json.dumps(pushed.log)


def test_a_path_that_holds_a_secret_is_never_printed(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{f"keys__{AWS_ID}__aws.env": AWS_PAIR})
    pushed = push(commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head()))
    blob = repo.git("rev-parse", f"HEAD:keys/{AWS_ID}/aws.env").strip()
    assert f"blob {blob[:12]} {SECRET_RULES}" in pushed.report[1]
    assert "a file name in tree " in pushed.report[1]
    assert AWS_ID not in "".join(pushed.report) and AWS_ID not in json.dumps(pushed.log)


def test_a_secret_in_a_commit_message_is_refused_naming_the_commit(repo):
    old = repo.head()
    new = repo.commit(f"deploy with {AWS_ID}", **{"notes.txt": "ok\n"})
    pushed = push(update(repo, old))
    assert pushed.report[1] == f"ng refs/heads/sandbox/x bottle: secret in commit {new[:12]} (DLP-AWS Access ID)"


def test_a_secret_in_the_bytes_a_thin_delta_inserts_is_refused(repo):
    old = repo.head()
    repo.commit("append", **{"config.txt": seed_lines() + AWS_PAIR})
    body = update(repo, old)
    assert REF_DELTA in object_kinds(body[len(commands(f"{old} {repo.head()} refs/heads/sandbox/x")):])
    base = repo.git("rev-parse", f"{old}:config.txt").strip()
    pushed = push(body)
    assert pushed.report[1] == f"ng refs/heads/sandbox/x bottle: secret in a change to object {base[:12]} {SECRET_RULES}"


def test_a_secret_removed_by_a_later_commit_of_the_same_push_is_still_refused(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{"config.txt": seed_lines() + AWS_PAIR})
    repo.commit("oops, remove it", **{"config.txt": seed_lines() + seed_lines(20)})
    data = repo.pack(repo.head())
    assert OFS_DELTA in object_kinds(data)  # the old version is a delta against the (larger) new one
    pushed = push(commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + data)
    assert pushed.report[1] == f"ng refs/heads/sandbox/x bottle: secret in a change to config.txt {SECRET_RULES}"


def test_a_secret_in_an_annotated_tag_is_refused_naming_the_tag(repo):
    repo.git("tag", "-a", "v1", "-m", f"release key {AWS_ID}")
    tag = repo.git("rev-parse", "v1").strip()
    policy = {**GIT, "push_branches": ["sandbox/*", "refs/tags/*"]}
    pushed = push(commands(f"{ZERO} {tag} refs/tags/v1") + repo.pack(tag, repo.head()), git=policy)
    assert pushed.report[1] == f"ng refs/tags/v1 bottle: secret in tag {tag[:12]} (DLP-AWS Access ID)"


def test_each_ref_is_told_whether_the_secret_is_its_own(tmp_path):
    repo = Repo(tmp_path / "fresh")
    clean = repo.commit("clean", **{"a.txt": "a\n"})
    dirty = repo.commit(f"key {AWS_ID}", **{"b.txt": "b\n"})
    body = commands(f"{ZERO} {clean} refs/heads/sandbox/a", f"{ZERO} {dirty} refs/heads/sandbox/b") + repo.pack(dirty)
    pushed = push(body)
    assert pushed.report == ["unpack ok", f"ng refs/heads/sandbox/a {OTHER}",
                             f"ng refs/heads/sandbox/b bottle: secret in commit {dirty[:12]} (DLP-AWS Access ID)"]


def test_several_findings_are_named_up_to_three(tmp_path):
    repo = Repo(tmp_path / "fresh")
    # Unrelated contents, so that git stores each whole rather than as a delta of another.
    repo.commit("seed", **{f"k{i}.env": f"{os.urandom(64).hex()}\nid = AKIA{i:016d}\n" for i in range(5)})
    pushed = push(commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head()))
    assert re.fullmatch(r"ng refs/heads/sandbox/x bottle: secret in (k[0-4]\.env \(DLP-AWS Access ID\); ){3}and 2 more",
                        pushed.report[1]), pushed.report[1]


# -- what passes ---------------------------------------------------------------------------


def test_a_clean_push_reaches_upstream_whole_and_every_kind_of_text_was_scanned(repo):
    old = repo.head()
    repo.commit("tidy the config", **{"config.txt": seed_lines() + "extra = 1\n", "docs__guide.md": "# guide\n"})
    body = update(repo, old)
    scanner = PatternScanner()
    pushed = push(body, scanner)
    assert pushed.sent == body
    assert pushed.flow.response.content == b"upstream"
    assert (pushed.log["decision"], pushed.log["scanner"]) == ("allow", [])
    scanned = "".join(scanner.texts)
    assert "tidy the config" in scanned and "# guide" in scanned and "guide.md" in scanned and "extra = 1" in scanned


def test_the_pack_checksum_is_held_until_the_scan_is_decided(repo):
    old = repo.head()
    repo.commit("small", **{"notes.txt": "ok\n"})
    body = update(repo, old)
    pushed = push(body)
    assert pushed.before_end == body[:-git.TAIL]
    assert pushed.sent == body


def test_a_binary_file_is_not_scanned_as_git_would_not_diff_it(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{"blob.bin": b"\0" + AWS_PAIR.encode()})
    body = commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head())
    assert push(body).sent == body


def test_audit_mode_logs_the_finding_and_lets_the_push_through(tmp_path):
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{"aws.env": AWS_PAIR})
    body = commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head())
    pushed = push(body, scanner={**POLICY["scanner"], "mode": "audit"})  # the policy's scanner section
    assert pushed.sent == body
    assert (pushed.log["decision"], pushed.log["reason"]) == ("would_block", f"bottle: secret in aws.env {SECRET_RULES}")


# -- fail closed ---------------------------------------------------------------------------


def test_a_scanner_that_cannot_answer_refuses_the_push(repo):
    old = repo.head()
    repo.commit("small", **{"notes.txt": "ok\n"})
    body = update(repo, old)
    pushed = push(body, ErrorAfter(calls=1))
    assert pushed.report[1] == ("ng refs/heads/sandbox/x bottle: could not scan the push "
                                "(scanner unavailable: scanner did not answer within 10s)")
    assert (pushed.log["decision"], pushed.log["rule"]) == ("block", "git.push")
    assert len(pushed.sent) < len(body)


def test_more_text_than_the_cap_refuses_the_push_and_stops_forwarding(tmp_path, monkeypatch):
    monkeypatch.setattr(pushscan, "MAX_SCAN_TEXT", 1024 * 1024)
    repo = Repo(tmp_path / "fresh")
    repo.commit("seed", **{"big.txt": "".join(f"row {i} {os.urandom(16).hex()}\n" for i in range(120000))})
    body = commands(f"{ZERO} {repo.head()} refs/heads/sandbox/x") + repo.pack(repo.head())
    pushed = push(body)
    assert pushed.report[1] == ("ng refs/heads/sandbox/x bottle: could not scan the push "
                                "(the push adds more than 1 MiB of text to scan)")
    assert len(pushed.sent) < len(body) // 2


def test_a_finding_stops_forwarding_while_the_rest_still_streams(tmp_path):
    repo = Repo(tmp_path / "fresh")
    new = repo.commit(f"key {AWS_ID}", **{"z.bin": os.urandom(2 * 1024 * 1024)})  # git writes commits first
    body = commands(f"{ZERO} {new} refs/heads/sandbox/x") + repo.pack(new)
    pushed = push(body)
    assert pushed.report[1] == f"ng refs/heads/sandbox/x bottle: secret in commit {new[:12]} (DLP-AWS Access ID)"
    assert len(pushed.sent) < 64 * 1024


def test_a_pack_that_ends_early_is_refused(repo):
    old = repo.head()
    repo.commit("small", **{"notes.txt": "ok\n"})
    pushed = push(update(repo, old)[:-40])
    assert pushed.report[1] == "ng refs/heads/sandbox/x bottle: could not read the push (the pack is incomplete)"


def test_a_push_whose_scan_was_never_awaited_is_refused():
    addon, lines = chain()
    f = make_flow("POST", "https://github.com/org/repo.git/git-receive-pack")
    c1, o1 = commit((A,))
    body = commands(f"{A} {o1} refs/heads/sandbox/x") + pack((1, c1))

    async def go() -> bytes:
        await addon.requestheaders(f)
        return b"".join(f.request.stream(body)) + b"".join(f.request.stream(b""))  # no hook: mitmproxy unpatched

    sent = asyncio.run(go())
    assert sent == body[:-git.TAIL]  # the fast-forward went on as proven; the pack never completed
    assert f.metadata["bottle"].push.refusals["refs/heads/sandbox/x"] == (
        "git.push", "bottle: internal error: the push ended before its scan did")


# -- the pack, read as it streams ------------------------------------------------------------


def test_every_undeltified_object_is_hashed_to_the_id_git_gives_it(repo):
    old = repo.head()
    repo.commit("more", **{"a.txt": "a\n", "src__b.txt": "b\n"})
    ids: list[str] = []

    class Sink(PackText):
        def end(self, obj: PackObject) -> None:
            if not obj.is_delta:
                ids.append(obj.oid.hex())

    data = repo.pack(repo.head(), old, thin=False)
    walker = PackWalker(Sink(lambda obj, text: None))
    walker.feed(data)
    listed = {line.split()[0] for line in repo.git("rev-list", "--objects", f"{old}..HEAD").splitlines()}
    assert walker.done and set(ids) <= listed and len(ids) >= 3
    assert walker.commit_trees == {repo.head(): repo.git("rev-parse", "HEAD^{tree}").strip()}


@pytest.mark.parametrize("delta, error", [
    (b"\x05\x0a\x91\x00\x0a", "delta copies from outside its base"),  # copy 10 bytes of a 5-byte base
    (b"\x05\x02\x03abc", "delta writes more than its result size"),
    (b"\x05\x04\x02ab", "delta is incomplete"),
    (b"\x05\x02\x00", "delta has a reserved instruction"),
])
def test_a_delta_that_does_not_add_up_is_an_error(delta, error):
    data = pack((7, delta))
    data = data[:12] + data[12:13] + bytes(20) + data[13:]  # the REF_DELTA's base id after its header
    with pytest.raises(PackError, match=error):
        PackWalker().feed(data)


def test_an_offset_delta_must_point_at_an_object_of_the_pack():
    data = pack((6, b"\x00\x01\x01x"))
    data = data[:13] + b"\x05" + data[13:]  # 5 bytes back from the object: inside the header
    with pytest.raises(PackError, match="delta base is not an object in this pack"):
        PackWalker().feed(data)


def test_a_pack_with_more_objects_than_the_cap_is_refused():
    with pytest.raises(PackError, match="the pack has 3 objects, more than bottle reads"):
        PackWalker(max_objects=2).feed(pack((3, b"a"), (3, b"b"), (3, b"c")))


def _texts(*objects: tuple[int, bytes]) -> list[bytes]:
    out: list[bytes] = []
    PackWalker(PackText(lambda obj, text: out.append(text))).feed(pack(*objects))
    return out


def test_a_blob_is_binary_exactly_when_git_says_so():
    assert _texts((3, b"x" * 7999 + b"\0")) == []
    assert _texts((3, b"x" * 8000 + b"\0")) == [b"x" * 8000 + b"\0"]


def test_a_secret_cut_by_a_piece_boundary_is_whole_in_the_next_piece():
    text = b"a" * (PIECE_BYTES - 10) + AWS_ID.encode() + b"b" * 100
    pieces = _texts((3, text))
    assert len(pieces) == 2 and AWS_ID.encode() not in pieces[0] and AWS_ID.encode() in pieces[1]
    assert pieces[1] == text[PIECE_BYTES - OVERLAP:]


def test_a_long_inserted_run_keeps_a_secret_whole_across_inflate_steps(repo):
    old = repo.commit("a base larger than what is added, so git stores a delta", **{"config.txt": seed_lines(8000)})
    insert = ("lorem ipsum " * 6000)[:65530] + AWS_PAIR + "tail\n" * 20000
    repo.commit("grow", **{"config.txt": seed_lines(8000) + insert})
    body = update(repo, old)
    assert REF_DELTA in object_kinds(body[len(commands(f"{old} {repo.head()} refs/heads/sandbox/x")):])
    assert push(body).report[1].endswith(SECRET_RULES)
