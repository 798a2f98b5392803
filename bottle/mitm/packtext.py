"""What of a pushed pack pipelock can read, and how to name where a finding is. No
mitmproxy imports.

`PackText` is the `PackSink` that turns each object into text pieces (at most
`PIECE_BYTES`, overlapping by `OVERLAP` so a secret cut by a piece boundary is whole in
one of them):
- a blob: its content, unless git would call it binary (a NUL in its first 8000 bytes);
- a tree: its entry names, one a line;
- a commit or tag: all of it (author, committer, extra headers, message);
- a delta: the printable ASCII runs of the bytes it inserts (the bytes it copies from its
  base are not in the pack).
`TreeIndex` keeps tree entries (bounded) to turn an object id into the path git shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bottle.mitm.pack import NO_OID, OBJ_BLOB, OBJ_TREE, PackError, PackObject

BINARY_PROBE = 8000  # git's buffer_is_binary looks this far for a NUL
PIECE_BYTES = 128 * 1024
OVERLAP = 4096
MIN_RUN = 8  # shorter printable runs in a delta hold no secret pipelock recognises
MAX_TREE_BYTES = 2 * 1024 * 1024  # tree entries kept to name files; past it, findings are named by id
MAX_DELTA_ENTRIES_PROBE = 64 * 1024  # inserted bytes searched for tree entries, per delta

_RUN = re.compile(rb"[\t\n\r\x20-\x7e]{%d,}" % MIN_RUN)  # printable ASCII
_PRINTABLE = b"\t\n\r" + bytes(range(0x20, 0x7F))
_ENTRY = re.compile(rb"([0-7]{5,6}) ([^\0/]{1,255})\0(.{20})", re.S)
_HEAD_ENTRY = re.compile(rb"([^\0/]{1,255})\0(.{20})", re.S)  # an entry whose mode was copied

Emit = Callable[[PackObject, bytes], None]


class PackText:
    """A `PackSink`: the text of every object, handed to `emit` piece by piece."""

    def __init__(self, emit: Emit, trees: TreeIndex | None = None, finished: Callable[[], None] | None = None) -> None:
        self.emit = emit
        self._finished = finished
        self.trees = trees or TreeIndex()
        self._obj: PackObject | None = None
        self._mode = ""
        self._in = bytearray()  # what a mode has not consumed yet
        self._out = bytearray()  # text not yet emitted (with the overlap already emitted)
        self._fresh = 0  # how many bytes at the end of _out were never emitted
        self._entries = bytearray()  # a full tree's content, or a delta's inserted tree entries
        self._inserts: list[bytes] | None = None
        self._run_open = False

    def begin(self, obj: PackObject) -> None:
        self._obj = obj
        self._mode = "runs" if obj.is_delta else {OBJ_BLOB: "probe", OBJ_TREE: "tree"}.get(obj.kind, "text")
        self._inserts = [] if obj.is_delta and obj.size <= MAX_DELTA_ENTRIES_PROBE else None
        self._in.clear()
        self._out.clear()
        self._entries.clear()
        self._fresh = 0
        self._run_open = False

    def data(self, chunk: bytes) -> None:
        if self._mode == "text":
            self._text(chunk)
        elif self._mode == "probe":
            self._in += chunk
            if 0 in self._in[:BINARY_PROBE]:
                self._mode = "binary"
                self._in.clear()
            elif len(self._in) >= BINARY_PROBE:
                self._mode = "text"
                self._text(bytes(self._in))
                self._in.clear()
        elif self._mode == "tree":
            self._in += chunk
            self._tree_entries()
        elif self._mode == "runs":
            if self._inserts is not None:
                self._inserts[-1:] = [(self._inserts[-1] if self._inserts else b"") + chunk]
            self._in += chunk
            self._runs(final=False)

    def copy(self) -> None:
        if self._mode == "runs":
            self._runs(final=True)
            if self._inserts is not None:
                self._inserts.append(b"")

    def end(self, obj: PackObject) -> None:
        if self._mode == "probe":
            self._text(bytes(self._in))
        elif self._mode == "tree":
            if self._in:
                raise PackError("tree entry is incomplete")
            self.trees.add(obj.oid, bytes(self._entries))
        elif self._mode == "runs":
            self._runs(final=True)
            for inserted in self._inserts or ():
                self.trees.add_inserted(inserted)
        self._in.clear()
        if self._fresh:
            self.emit(obj, bytes(self._out))
        self._out.clear()
        self._entries.clear()
        self._fresh = 0
        self._inserts = None

    def finished(self) -> None:
        if self._finished is not None:
            self._finished()

    def _text(self, data: bytes) -> None:
        self._out += data
        self._fresh += len(data)
        while len(self._out) >= PIECE_BYTES:
            self.emit(self._obj, bytes(self._out[:PIECE_BYTES]))
            del self._out[:PIECE_BYTES - OVERLAP]
            self._fresh = max(0, len(self._out) - OVERLAP)

    def _tree_entries(self) -> None:
        buf, pos = self._in, 0
        while True:
            nul = buf.find(b"\0", pos)
            if nul < 0 or len(buf) < nul + 21:
                if len(buf) - pos > 4096 + 21:
                    raise PackError("tree entry is malformed")
                break
            mode, space, name = bytes(buf[pos:nul]).partition(b" ")
            if not space or not mode.isdigit() or not name:
                raise PackError("tree entry is malformed")
            self._text(name + b"\n")
            if self.trees.has_room(len(self._entries) + nul + 21 - pos):
                self._entries += buf[pos:nul + 21]
            pos = nul + 21
        del buf[:pos]

    def _runs(self, final: bool) -> None:
        buf = self._in
        if self._run_open:  # the rest of a long run, however short, continues its text
            lead = len(buf) - len(buf.lstrip(_PRINTABLE))
            if lead == len(buf) and not final:
                self._text(bytes(buf))
                buf.clear()
                return
            self._text(bytes(buf[:lead]) + b"\n")
            del buf[:lead]
            self._run_open = False
        cut = len(buf) if final else len(buf.rstrip(_PRINTABLE))
        if cut == 0:
            if len(buf) < PIECE_BYTES:
                return  # one printable run so far; it may go on in the next chunk
            self._text(bytes(buf))  # a long run: its text goes on, unbroken, with the next chunk
            buf.clear()
            self._run_open = True
            return
        for match in _RUN.finditer(buf, 0, cut):
            self._text(match.group() + b"\n")
        del buf[:cut]


class TreeIndex:
    """Tree entries from the pack, to name the file a finding is in: whole trees (with
    their ids), and entries found in the bytes a tree delta inserts (their tree unknown;
    when git copied the start of an entry from the base, the name found may have lost its
    beginning, and is shown as `*name`). At most `MAX_TREE_BYTES` are kept."""

    def __init__(self, budget: int = MAX_TREE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._trees: list[tuple[bytes, bytes]] = []
        self._found: list[tuple[bytes, bytes, bool]] = []  # (name, id, whole name)
        self._parents: dict[bytes, tuple[bytes | None, str]] | None = None

    def has_room(self, size: int) -> bool:
        return self.used + size <= self.budget

    def add(self, oid: bytes, entries: bytes) -> None:
        if entries and self.has_room(len(entries)):
            self.used += len(entries)
            self._trees.append((oid, entries))
            self._parents = None

    def add_inserted(self, inserted: bytes) -> None:
        """Entries in one run of bytes a delta inserts."""
        found = [(m.group(2), m.group(3), True) for m in _ENTRY.finditer(inserted)]
        if (head := _HEAD_ENTRY.match(inserted)) and not _ENTRY.match(inserted) and _printable(head.group(1)):
            found.append((head.group(1), head.group(2), False))
        for name, child, whole in found:
            if self.has_room(len(name) + 21):
                self.used += len(name) + 21
                self._found.append((name, child, whole))
                self._parents = None

    def path(self, oid: bytes, roots: set[bytes]) -> tuple[list[str], bytes | None] | None:
        """The names from a root tree down to oid, and that root; None for the root when
        the chain leaves what the pack holds; None if nothing names oid."""
        parents = self._parent_map()
        names: list[str] = []
        seen = set()
        while oid not in roots:
            link = parents.get(oid)
            if link is None or oid in seen:
                return (names[::-1], None) if names else None
            seen.add(oid)
            oid, name = link
            names.append(name)
            if oid is None:
                return names[::-1], None
        return names[::-1], oid

    def _parent_map(self) -> dict[bytes, tuple[bytes | None, str]]:
        if self._parents is None:
            # The most certain name wins: a whole tree's, then a whole name found in a delta.
            self._parents = {child: (None, "*" + name.decode("utf-8", "replace"))
                             for name, child, whole in self._found if not whole}
            self._parents.update({child: (None, name.decode("utf-8", "replace"))
                                  for name, child, whole in self._found if whole})
            for tree, entries in self._trees:
                for name, child in _whole_entries(entries):
                    self._parents[child] = (tree, name.decode("utf-8", "replace"))
            self._parents.pop(NO_OID, None)
        return self._parents


def _whole_entries(entries: bytes):
    """(name, id) of each entry of a tree read whole (already checked as it streamed)."""
    pos = 0
    while (nul := entries.find(b"\0", pos)) >= 0:
        yield entries[entries.index(b" ", pos) + 1:nul], entries[nul + 1:nul + 21]
        pos = nul + 21


def _printable(name: bytes) -> bool:
    try:
        return name.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False
