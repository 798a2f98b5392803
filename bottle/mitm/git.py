"""Git smart-HTTP policy: pure functions and a streaming push inspector. No mitmproxy imports.

A push (`POST .../git-receive-pack`) is a pkt-line command section followed by a
packfile (https://git-scm.com/docs/pack-protocol, https://git-scm.com/docs/gitformat-pack).
`PushInspector` reads the commands, then walks the pack (bottle.mitm.pack) as it streams
past, and holds the bytes it has seen until it can decide: a fast-forward is proven only
when a chain of commits *inside the pack* leads from the new id to the old one (each
commit's id is recomputed from its content, so the chain cannot be forged). Anything it
cannot prove is refused; see docs/prds/0004-git-push-policy.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from bottle.mitm.pack import PackError, PackSink, PackWalker
from bottle.mitm.policy import GitPolicy, GitRepository

ZERO_OID = "0" * 40
_OID_RE = re.compile(r"^[0-9a-f]{40}$")
MAX_COMMAND_SECTION = 1024 * 1024
# Bytes of a push held back from upstream while its fast-forwards are unproven. git
# writes commits first in a pack, so a fast-forward is normally proven within the first
# few kilobytes of the pack; a push that needs more than this is refused, not buffered.
MAX_HELD_BYTES = 16 * 1024 * 1024
# Even an allowed push keeps its last bytes (the pack's checksum) until the body has
# ended and its scan is decided: upstream never holds a complete pack bottle may refuse.
TAIL = 20

FLUSH = "flush"
DELIM = "delim"
RESPONSE_END = "response-end"


class PktLineError(ValueError):
    """Malformed pkt-line or receive-pack command input."""


def read_pkt(buf: bytes | bytearray, pos: int) -> tuple[str | bytes, int] | None:
    """One pkt-line at pos: (payload or FLUSH/DELIM/RESPONSE_END, next pos); None if incomplete."""
    if len(buf) - pos < 4:
        return None
    head = bytes(buf[pos:pos + 4])
    if not re.fullmatch(rb"[0-9a-fA-F]{4}", head):
        raise PktLineError(f"bad pkt-line length {head!r}")
    length = int(head, 16)
    if length == 0:
        return FLUSH, pos + 4
    if length == 1:
        return DELIM, pos + 4
    if length == 2:
        return RESPONSE_END, pos + 4
    if length < 4:
        raise PktLineError(f"bad pkt-line length {length}")
    if len(buf) - pos < length:
        return None
    return bytes(buf[pos + 4:pos + length]), pos + length


def pkt(payload: bytes) -> bytes:
    if len(payload) > 65516:
        raise ValueError("pkt-line payload too long")
    return b"%04x" % (len(payload) + 4) + payload


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @property
    def is_creation(self) -> bool:
        return self.old == ZERO_OID

    @property
    def is_deletion(self) -> bool:
        return self.new == ZERO_OID


@dataclass(frozen=True)
class PushCommands:
    updates: tuple[RefUpdate, ...]
    capabilities: frozenset[str]
    end: int  # offset of the first pack byte

    @property
    def side_band(self) -> bool:
        return bool({"side-band-64k", "side-band"} & self.capabilities)


def parse_commands(buf: bytes | bytearray) -> PushCommands | None:
    """The receive-pack command section at the start of buf; None until it is complete."""
    pos = 0
    updates: list[RefUpdate] = []
    caps: frozenset[str] = frozenset()
    while True:
        item = read_pkt(buf, pos)
        if item is None:
            if len(buf) > MAX_COMMAND_SECTION:
                raise PktLineError("command section is too long")
            return None
        payload, pos = item
        if payload == FLUSH:
            break
        if isinstance(payload, str):
            raise PktLineError(f"unexpected {payload} packet in the command section")
        line = payload[:-1] if payload.endswith(b"\n") else payload
        if line.startswith(b"shallow ") and not updates:
            continue
        if not updates:
            line, _, raw_caps = line.partition(b"\0")
            caps = frozenset(raw_caps.decode("ascii", "replace").split())
        elif b"\0" in line:
            raise PktLineError("capabilities after the first command")
        updates.append(_parse_update(line))
    if not updates:
        return PushCommands((), caps, pos)  # git's auth probe: a lone flush before a large push
    if "push-options" in caps:
        while True:
            item = read_pkt(buf, pos)
            if item is None:
                return None
            payload, pos = item
            if payload == FLUSH:
                break
            if isinstance(payload, str):
                raise PktLineError(f"unexpected {payload} packet in the push options")
    return PushCommands(tuple(updates), caps, pos)


def _parse_update(line: bytes) -> RefUpdate:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise PktLineError("ref update is not UTF-8") from None
    parts = text.split(" ")
    if len(parts) != 3 or not _OID_RE.match(parts[0]) or not _OID_RE.match(parts[1]) or not parts[2].startswith("refs/"):
        raise PktLineError(f"not a ref update: {text[:200]!r}")
    if parts[0] == ZERO_OID and parts[1] == ZERO_OID:
        raise PktLineError(f"ref update with two zero ids: {parts[2]!r}")
    return RefUpdate(parts[0], parts[1], parts[2])


# -- requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class GitRequest:
    repo: str  # owner/repo (or group/.../repo), lower case, without .git
    service: str  # git-upload-pack | git-receive-pack


_SUFFIXES = ("/info/refs", "/git-upload-pack", "/git-receive-pack")


def classify(path: str) -> GitRequest | None:
    """The repository and service of a smart-HTTP request path; None if it is not one."""
    raw, _, query = path.partition("?")
    clean = unquote(raw)
    for suffix in _SUFFIXES:
        if clean.endswith(suffix):
            repo = clean[: -len(suffix)]
            if suffix == "/info/refs":
                services = parse_qs(query).get("service", ["git-upload-pack"])
                service = services[0] if len(services) == 1 else "git-receive-pack"
            else:
                service = suffix[1:]
            return GitRequest(normalize_repo(repo), service)
    return None


def normalize_repo(path: str) -> str:
    path = path.strip("/").lower()
    if path.endswith(".git"):
        path = path[:-4]
    return path


def git_hosts(policy: GitPolicy | None) -> frozenset[str]:
    return frozenset(r.host for r in policy.repositories) if policy else frozenset()


@dataclass(frozen=True)
class GitVerdict:
    allowed: bool
    rule_id: str
    reason: str
    repository: GitRepository | None = None


def check_request(policy: GitPolicy | None, host: str, path: str) -> GitVerdict | None:
    """None when git policy does not govern this request; else whether the repo may be used."""
    if policy is None or host not in git_hosts(policy):
        return None
    request = classify(path)
    if request is None:
        return None
    if any(seg in (".", "..", "") for seg in request.repo.split("/")) or "\\" in request.repo:
        return GitVerdict(False, "git.repositories", f"git path {request.repo!r} is not a repository path")
    for repo in policy.repositories:
        if repo.host == host and repo.path == request.repo:
            if request.service == "git-receive-pack" and repo.access != "push":
                return GitVerdict(False, repo.id, f"{host}/{repo.path} is read-only (access: {repo.access})", repo)
            if request.service not in ("git-upload-pack", "git-receive-pack"):
                return GitVerdict(False, repo.id, f"unknown git service {request.service!r}", repo)
            return GitVerdict(True, repo.id, "", repo)
    return GitVerdict(False, "git.repositories", f"repository {host}/{request.repo} is not in git.repositories")


def is_push(method: str, path: str) -> bool:
    request = classify(path)
    return method.upper() == "POST" and request is not None and path.split("?", 1)[0].endswith("/git-receive-pack")


# -- ref rules -----------------------------------------------------------------------


def glob_matches(pattern: str, ref: str) -> bool:
    """A branch glob (`sandbox/*`, `*` crossing `/` as in git refspecs) against a full ref."""
    full = pattern if pattern.startswith("refs/") else f"refs/heads/{pattern}"
    regex = "".join(".*" if c == "*" else re.escape(c) for c in full)
    return re.fullmatch(regex, ref) is not None


def short_ref(ref: str) -> str:
    return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref


def check_update(policy: GitPolicy, update: RefUpdate) -> tuple[str, str] | None:
    """(rule id, reason) refusing one ref update on its commands alone; None if it may proceed."""
    name = short_ref(update.ref)
    if update.is_deletion and not policy.allow_branch_deletion:
        return "git.allow_branch_deletion", f"bottle: deleting {name} is not allowed"
    if any(glob_matches(p, update.ref) for p in policy.protected_branches):
        return "git.protected_branches", f"bottle: {name} is a protected branch"
    if policy.push_branches is not None and not any(glob_matches(p, update.ref) for p in policy.push_branches):
        return "git.push_branches", f"bottle: {name} is not in git.push_branches ({', '.join(policy.push_branches)})"
    return None


def needs_ancestry(policy: GitPolicy, update: RefUpdate) -> bool:
    return not (policy.allow_force_push or update.is_creation or update.is_deletion)


FORCE_PUSH_RULE = "git.allow_force_push"
FORCE_PUSH_REASON = "bottle: force push is not allowed (could not prove {name} fast-forwards)"
OTHER_REFUSED = "bottle: push refused because another ref was refused"


def proves_fast_forward(commits: dict[str, tuple[str, ...]], old: str, new: str) -> bool:
    """True iff a chain of commits known from the pack leads from new to old."""
    if old == new:
        return True
    seen = {new}
    todo = [new]
    while todo:
        for parent in commits.get(todo.pop(), ()):
            if parent == old:
                return True
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return False


# -- the whole push ------------------------------------------------------------------


class PushInspector:
    """Feed a push body chunk by chunk; `decided` turns true once the ref rules and
    fast-forwards are decided, and `take()` says what may go upstream so far.

    `refusals` maps ref → (rule id, reason); empty means the push may go upstream. Bytes
    are held (`held`) until the decision, and the last `TAIL` until `finish()`; after a
    refusal or `halt()` nothing more is released. The whole pack is walked either way, so
    its sink (the scan) sees every object.
    """

    def __init__(self, policy: GitPolicy, max_held: int = MAX_HELD_BYTES, sink: PackSink | None = None) -> None:
        self.policy = policy
        self.max_held = max_held
        self.commands: PushCommands | None = None
        self.refusals: dict[str, tuple[str, str]] = {}
        self.decided = False
        self.halted = False
        self.finished = False
        self.held = bytearray()
        self.walker = PackWalker(sink)
        self._pending: list[RefUpdate] = []

    def feed(self, data: bytes) -> None:
        if self.refusals:
            return
        if not self.halted:
            self.held += data
        try:
            if self.commands is None:
                self.commands = parse_commands(self.held)
                if self.commands is None:
                    return self._check_size()
                self._judge_commands()
                if self.refusals:
                    return
                data = bytes(self.held[self.commands.end:])
            if not self.commands.updates:
                if data:
                    raise PktLineError("data after an empty command list")
                return
            if data:
                self.walker.feed(data)
        except (PktLineError, PackError) as e:
            return self.refuse_all("git.push", f"bottle: could not read the push ({e})")
        if self._pending:
            self._pending = [u for u in self._pending
                             if not proves_fast_forward(self.walker.commits, u.old, u.new)]
            self.decided = not self._pending
            self._check_size()

    def take(self, final: bool = False) -> bytes:
        """What may go upstream now: nothing before the decision or after a refusal, then
        everything held but the last `TAIL` bytes, which only the final call releases."""
        if self.refusals or self.halted:
            self.held = bytearray()
            return b""
        if not self.decided or (final and not self.finished):
            return b""
        cut = len(self.held) if final else max(0, len(self.held) - TAIL)
        out = bytes(self.held[:cut])
        del self.held[:cut]
        return out

    def halt(self) -> None:
        """The push will be refused (its scan found something): release nothing more."""
        self.halted = True
        self.held = bytearray()

    def finish(self) -> None:
        """The body ended: whatever is still unproven, or an unfinished pack, is refused."""
        if self.finished or self.refusals:
            self.finished = True
            return
        self.finished = True
        if self.commands is None:
            return self.refuse_all("git.push", "bottle: could not read the push (incomplete commands)")
        if not self.commands.updates:
            self.decided = True
            return
        if any(not u.is_deletion for u in self.commands.updates) and not self.walker.done:
            return self.refuse_all("git.push", "bottle: could not read the push (the pack is incomplete)")
        for update in self._pending:
            self.refusals[update.ref] = (FORCE_PUSH_RULE, FORCE_PUSH_REASON.format(name=short_ref(update.ref)))
        if self.refusals:
            self._complete_refusals()
        self.decided = True

    def _judge_commands(self) -> None:
        assert self.commands is not None
        for update in self.commands.updates:
            if (refusal := check_update(self.policy, update)) is not None:
                self.refusals[update.ref] = refusal
        if self.refusals:
            self._complete_refusals()
            return
        self._pending = [u for u in self.commands.updates if needs_ancestry(self.policy, u)]
        self.decided = bool(self.commands.updates) and not self._pending

    def _check_size(self) -> None:
        if len(self.held) > self.max_held and not self.decided:
            if self.commands is None:
                return self.refuse_all("git.push", "bottle: could not read the push (command section too long)")
            for update in self._pending:
                self.refusals[update.ref] = (
                    FORCE_PUSH_RULE,
                    f"bottle: could not prove {short_ref(update.ref)} fast-forwards within "
                    f"{self.max_held // (1024 * 1024)} MiB of the push",
                )
            self._complete_refusals()

    def refuse(self, refusals: dict[str, tuple[str, str]]) -> None:
        """Refuse the named refs (ref → (rule id, reason)); the others are refused with them."""
        self.refusals.update(refusals)
        self._complete_refusals()

    def refuse_all(self, rule_id: str, reason: str) -> None:
        refs = [u.ref for u in self.commands.updates] if self.commands else []
        self.refusals = {ref: (rule_id, reason) for ref in refs} or {"": (rule_id, reason)}
        self._complete_refusals()

    def _complete_refusals(self) -> None:
        if self.commands is not None:
            for update in self.commands.updates:
                self.refusals.setdefault(update.ref, ("git.push", OTHER_REFUSED))
        self.decided = True
        self.held = bytearray()

    @property
    def first_refusal(self) -> tuple[str, str]:
        """The (rule id, reason) that caused the refusal, for the log."""
        for rule_id, reason in self.refusals.values():
            if reason != OTHER_REFUSED:
                return rule_id, reason
        return next(iter(self.refusals.values()))

    def report(self) -> bytes:
        refs = [u.ref for u in self.commands.updates] if self.commands else []
        side_band = self.commands.side_band if self.commands else False
        if not refs:
            return receive_pack_error(self.first_refusal[1], side_band)
        return receive_pack_report([(ref, self.refusals.get(ref, (None, None))[1]) for ref in refs], side_band)


def receive_pack_report(results: list[tuple[str, str | None]], side_band: bool) -> bytes:
    """A receive-pack status report: `unpack ok`, then `ok <ref>` or `ng <ref> <reason>` each."""
    report = pkt(b"unpack ok\n")
    for ref, reason in results:
        line = f"ok {ref}\n" if reason is None else f"ng {ref} {_one_line(reason)}\n"
        report += pkt(line.encode("utf-8"))
    report += b"0000"
    if not side_band:
        return report
    out = b""
    for i in range(0, len(report), 65515):
        out += pkt(b"\x01" + report[i:i + 65515])
    return out + b"0000"


def receive_pack_error(reason: str, side_band: bool) -> bytes:
    """When no ref could be read, the best git can show: an unpack failure with the reason."""
    report = pkt(f"unpack {_one_line(reason)}\n".encode()) + b"0000"
    return pkt(b"\x01" + report) + b"0000" if side_band else report


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]
