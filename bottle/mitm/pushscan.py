"""pipelock's verdict on what a push adds, found while the pack streams.

`PushScan` collects the text `PackText` finds (bottle.mitm.packtext) into batches and
scans each with pipelock as an asyncio task as soon as it is full, a few at a time, so
scanning overlaps the upload. A denied batch is split in halves and rescanned until the
objects holding the secret are known. `wait()` awaits the rest (bottle.mitm.push calls it
from the hook mitmproxy awaits before the push's last bytes go upstream); `refusals()`
names, per ref, the file (or commit, or change) and the findings, as git will print them.
Fail closed: a scanner error, or more text than `MAX_SCAN_TEXT`, refuses the push.
See docs/prds/0004-git-push-policy.md.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Any

from bottle.mitm.pack import NO_OID, OBJ_COMMIT, OBJ_TAG, OBJ_TREE, TYPE_NAMES, PackObject, PackWalker
from bottle.mitm.packtext import PIECE_BYTES, PackText, TreeIndex
from bottle.mitm.scanner import ScannerUnavailable, ScanResult

# Text is held until pipelock has scanned it, and pipelock reads about 0.3-1 MB/s, so the
# text one push may add is capped: a push over it is refused, never buffered without end.
MAX_SCAN_TEXT = 16 * 1024 * 1024
BATCH_BYTES = PIECE_BYTES  # pieces ≤ PIECE_BYTES, batched up to this (pipelock's text field limit is ≥ 1 MiB)
CONCURRENCY = 4
MAX_NAMED = 3  # findings named in one ref's reason; the rest are counted

Batch = list[tuple[PackObject, bytes]]


class PushScan:
    def __init__(self, scanner: Any, audit: bool = False, max_text: int | None = None) -> None:
        self.scanner = scanner
        self.audit = audit  # scanner.mode: audit: findings are logged, the push goes on
        self.max_text = max_text or MAX_SCAN_TEXT
        self.text = PackText(self._add, TreeIndex(), finished=self.flush)
        self.findings: dict[PackObject, tuple[str, ...]] = {}  # in the order they were found
        self.error: str | None = None
        self.settled = False  # the verdict was taken before the push's last bytes could go
        self.scanned = 0  # text bytes sent to pipelock
        self._batch: Batch = []
        self._batch_bytes = 0
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None

    @property
    def refused(self) -> bool:
        """The push will not go upstream: an error, or a finding outside audit mode."""
        return self.error is not None or (bool(self.findings) and not self.audit)

    def _add(self, obj: PackObject, text: bytes) -> None:
        if self.error is not None:
            return
        self.scanned += len(text)
        if self.scanned > self.max_text:
            self.error = f"the push adds more than {self.max_text // (1024 * 1024)} MiB of text to scan"
            self._batch, self._batch_bytes = [], 0
            return
        if self._batch_bytes + len(text) > BATCH_BYTES:
            self.flush()
        self._batch.append((obj, text))
        self._batch_bytes += len(text)

    def flush(self) -> None:
        """Start scanning what is batched: after each chunk of the push, and when the pack ends."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        task = asyncio.get_running_loop().create_task(self._scan(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        self.flush()
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(pending)

    async def _scan(self, batch: Batch) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(CONCURRENCY)
        try:
            async with self._slots:
                await self._narrow(batch, await self._verdict(batch))
        except ScannerUnavailable as e:
            self.error = self.error or f"scanner unavailable: {e.reason}"
        except Exception as e:
            print(f"bottle: push scan failed, refusing: {traceback.format_exc()}", file=sys.stderr, flush=True)
            self.error = self.error or f"internal error scanning the push ({type(e).__name__})"

    async def _verdict(self, batch: Batch) -> ScanResult:
        return await self.scanner.scan_text("\n\n".join(text.decode("utf-8", "replace") for _, text in batch))

    async def _narrow(self, batch: Batch, result: ScanResult) -> None:
        """Which objects of a denied batch hold the secret: halves until one object is left."""
        if result.decision != "deny":
            return
        objects = list(dict.fromkeys(obj for obj, _ in batch))
        if len(objects) > 1:
            half = set(objects[:len(objects) // 2])
            parts = [[p for p in batch if p[0] in half], [p for p in batch if p[0] not in half]]
            results = [await self._verdict(part) for part in parts]
            if any(r.decision == "deny" for r in results):
                for part, part_result in zip(parts, results):
                    await self._narrow(part, part_result)
                return
            # Only the two halves together match: all of them are named.
        for obj in objects:
            rules = tuple(dict.fromkeys(rule for rule, _ in result.findings)) or ("scanner",)
            self.findings[obj] = tuple(dict.fromkeys(self.findings.get(obj, ()) + rules))

    async def reasons(self, refs: list[tuple[str, str]], walker: PackWalker) -> dict[str, str]:
        """ref → why it is refused (refs as (name, new id)); a ref with no finding of its
        own is left out, and a finding no ref can be traced to is every ref's. A path may
        itself hold a secret (a file named after one), so the reasons are scanned too: if
        pipelock objects, or cannot answer, objects are named by id instead."""
        if self.error is not None:
            return {ref: f"bottle: could not scan the push ({self.error})" for ref, _ in refs}
        named = self._reasons(refs, Labels(self.text.trees, walker))
        try:
            clean = (await self.scanner.scan_text("\n".join(named.values()))).decision != "deny"
        except ScannerUnavailable:
            clean = False
        return named if clean else self._reasons(refs, Labels(TreeIndex(budget=0), walker))

    def _reasons(self, refs: list[tuple[str, str]], labels: Labels) -> dict[str, str]:
        found: dict[str, list[str]] = {}
        for obj, rules in self.findings.items():
            label, commit = labels.of(obj)
            owners = [ref for ref, new in refs if commit is not None and labels.reaches(new, commit)]
            for ref in owners or [ref for ref, _ in refs]:
                found.setdefault(ref, []).append(f"{label} ({', '.join(rules)})")
        return {ref: _reason(items) for ref, items in found.items()}

    @property
    def rule_ids(self) -> list[str]:
        return list(dict.fromkeys(rule for rules in self.findings.values() for rule in rules))


def _reason(items: list[str]) -> str:
    named = "; ".join(items[:MAX_NAMED])
    more = f"; and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return f"bottle: secret in {named}{more}"


class Labels:
    """Names an object the way a person finds it: a path, a commit, or the object a
    change was made to, from what the pack holds."""

    def __init__(self, trees: TreeIndex, walker: PackWalker) -> None:
        self.trees = trees
        self.commits = walker.commits
        self._roots: dict[bytes, str] = {}  # root tree id → a commit that has it
        for commit, tree in walker.commit_trees.items():
            self._roots.setdefault(bytes.fromhex(tree), commit)
        self._reach: dict[str, set[str]] = {}

    def of(self, obj: PackObject) -> tuple[str, str | None]:
        """(label, the pack commit it was found under, if known)."""
        if obj.kind == OBJ_COMMIT:
            return f"commit {obj.oid.hex()[:12]}", obj.oid.hex()
        if obj.kind == OBJ_TAG:
            return f"tag {obj.oid.hex()[:12]}", None
        if obj.is_delta:
            if obj.base == NO_OID:
                return "a change to an object", None
            where, _ = self._path_of(obj.base)
            return f"a change to {where or 'object ' + obj.base.hex()[:12]}", None
        where, commit = self._path_of(obj.oid)
        if obj.kind == OBJ_TREE:
            if where == "":
                return "a file name at the top level", commit
            return (f"a file name in {where}/" if where else f"a file name in tree {obj.oid.hex()[:12]}"), commit
        return where or f"{TYPE_NAMES[obj.kind]} {obj.oid.hex()[:12]}", commit

    def _path_of(self, oid: bytes) -> tuple[str | None, str | None]:
        if oid in self._roots:
            return "", self._roots[oid]
        found = self.trees.path(oid, set(self._roots))
        if found is None:
            return None, None
        names, root = found
        if root is None:
            return ".../" + "/".join(names), None
        return "/".join(names), self._roots[root]

    def reaches(self, new: str, commit: str) -> bool:
        """Whether commit is new or one of its ancestors among the pack's commits."""
        if new not in self._reach:
            self._reach[new] = _ancestry(self.commits, new)
        return commit in self._reach[new]


def _ancestry(commits: dict[str, tuple[str, ...]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for parent in commits.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen
