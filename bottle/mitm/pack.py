"""A packfile read as it streams past, never held whole. No mitmproxy imports.

Format: https://git-scm.com/docs/gitformat-pack. `PackWalker` inflates each object in
64 KiB steps, hashes every undeltified object to its real id, records each commit's
parents and tree (bottle.mitm.git proves fast-forwards with them) and hands what it reads
to a `PackSink` (bottle.mitm.packtext turns it into the text pipelock scans). A delta is
read instruction by instruction: the bytes it inserts go to the sink; the bytes it copies
from its base are only counted, because the base may be an object the server already has
(a thin pack) and is never in the pack.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import Protocol

OBJ_COMMIT, OBJ_TREE, OBJ_BLOB, OBJ_TAG, OFS_DELTA, REF_DELTA = 1, 2, 3, 4, 6, 7
TYPE_NAMES = {OBJ_COMMIT: "commit", OBJ_TREE: "tree", OBJ_BLOB: "blob", OBJ_TAG: "tag"}
MAX_COMMIT_BYTES = 1024 * 1024
# The walker keeps 28 bytes per object (its offset and id, so a delta can name its base):
# 14 MB at this cap. git's own pushes of an agent's work are orders of magnitude smaller.
MAX_PACK_OBJECTS = 500_000
STEP = 65536
NO_OID = bytes(20)


class PackError(ValueError):
    pass


@dataclass(eq=False)
class PackObject:
    """One object as the walker reads it."""

    kind: int  # OBJ_* or OFS_DELTA / REF_DELTA
    size: int  # inflated size: the content, or for a delta its instructions
    offset: int
    oid: bytes = b""  # undeltified objects, once read: the real object id
    base: bytes = b""  # deltas: the id of the object their chain of bases starts from (NO_OID: unknown)

    @property
    def is_delta(self) -> bool:
        return self.kind in (OFS_DELTA, REF_DELTA)


class PackSink(Protocol):
    def begin(self, obj: PackObject) -> None: ...

    def data(self, chunk: bytes) -> None:
        """An undeltified object's content, or the bytes a delta inserts, in order."""

    def copy(self) -> None:
        """A delta copies bytes from its base here: the inserted bytes around it are not adjacent."""

    def end(self, obj: PackObject) -> None: ...

    def finished(self) -> None:
        """The pack's last object has been read."""


class NullSink:
    """Reads nothing: the walker alone, or a base for a sink that wants a few events."""

    def begin(self, obj: PackObject) -> None:
        pass

    def data(self, chunk: bytes) -> None:
        pass

    def copy(self) -> None:
        pass

    def end(self, obj: PackObject) -> None:
        pass

    def finished(self) -> None:
        pass


class DeltaReader:
    """A delta's instructions as they inflate: inserted bytes to the sink, copies counted
    and checked against the sizes the delta declares (a delta that does not add up is an
    error, never skipped)."""

    def __init__(self, sink: PackSink) -> None:
        self.sink = sink
        self._partial = b""  # an instruction or size split across two chunks
        self._sizes: list[int] = []  # base size, result size
        self._written = 0
        self._insert = 0

    def feed(self, data: bytes) -> None:
        if self._partial:
            data, self._partial = self._partial + data, b""
        pos, n = 0, len(data)
        while pos < n:
            if self._insert:
                take = min(self._insert, n - pos)
                self.sink.data(data[pos:pos + take])
                self._insert -= take
                pos += take
                continue
            step = self._sizes_step(data, pos) if len(self._sizes) < 2 else self._instruction(data, pos)
            if step is None:
                self._partial = data[pos:]
                return
            pos = step

    def _sizes_step(self, data: bytes, pos: int) -> int | None:
        value = shift = 0
        for i in range(pos, min(len(data), pos + 10)):
            value |= (data[i] & 0x7F) << shift
            shift += 7
            if not data[i] & 0x80:
                self._sizes.append(value)
                return i + 1
        if len(data) - pos >= 10:
            raise PackError("delta size too long")
        return None

    def _instruction(self, data: bytes, pos: int) -> int | None:
        cmd = data[pos]
        if not cmd:
            raise PackError("delta has a reserved instruction")
        if not cmd & 0x80:
            self._insert = cmd
            self._grow(cmd)
            return pos + 1
        fields = [bit for bit in range(7) if cmd & (1 << bit)]
        if len(data) - pos - 1 < len(fields):
            return None
        offset = size = 0
        for i, bit in enumerate(fields):
            byte = data[pos + 1 + i]
            if bit < 4:
                offset |= byte << (8 * bit)
            else:
                size |= byte << (8 * (bit - 4))
        size = size or 0x10000
        if offset + size > self._sizes[0]:
            raise PackError("delta copies from outside its base")
        self._grow(size)
        self.sink.copy()
        return pos + 1 + len(fields)

    def _grow(self, count: int) -> None:
        self._written += count
        if self._written > self._sizes[1]:
            raise PackError("delta writes more than its result size")

    def close(self) -> None:
        if self._partial or self._insert or len(self._sizes) < 2 or self._written != self._sizes[1]:
            raise PackError("delta is incomplete")


class PackWalker:
    """Streams a packfile: every object is inflated, hashed (undeltified) or read as a
    delta, and handed to the sink; memory stays bounded by the commit graph and 28 bytes
    per object, not by the pack."""

    def __init__(self, sink: PackSink | None = None, max_objects: int = MAX_PACK_OBJECTS) -> None:
        self.sink: PackSink = sink or NullSink()
        self.max_objects = max_objects
        self.commits: dict[str, tuple[str, ...]] = {}  # commit id → parent ids
        self.commit_trees: dict[str, str] = {}  # commit id → root tree id
        self.done = False
        self._buf = bytearray()
        self._pos = 0  # offset in the pack of _buf[0]
        self._state = "header"
        self._remaining = 0
        self._obj: PackObject | None = None
        self._z: zlib._Decompress | None = None
        self._hash: hashlib._Hash | None = None
        self._delta: DeltaReader | None = None
        self._commit: bytearray | None = None
        self._inflated = 0
        self._offsets = array("Q")  # every object's offset, ascending
        self._ids = bytearray()  # per object: its id (undeltified) or its chain's base id

    def feed(self, data: bytes) -> None:
        if self.done:
            if data:
                raise PackError("data after the pack trailer")
            return
        self._buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self._state == "header":
            if len(self._buf) < 12:
                return False
            if self._buf[:4] != b"PACK" or int.from_bytes(self._buf[4:8], "big") not in (2, 3):
                raise PackError("not a version 2 or 3 packfile")
            self._remaining = int.from_bytes(self._buf[8:12], "big")
            if self._remaining > self.max_objects:
                raise PackError(f"the pack has {self._remaining} objects, more than bottle reads ({self.max_objects})")
            self._consume(12)
            self._state = "object" if self._remaining else "trailer"
            return True
        if self._state == "object":
            return self._object_header()
        if self._state == "zlib":
            return self._inflate()
        if len(self._buf) >= 20:  # trailer
            if len(self._buf) > 20:
                raise PackError("data after the pack trailer")
            self._consume(20)
            self.done = True
            self.sink.finished()
        return False

    def _consume(self, count: int) -> None:
        del self._buf[:count]
        self._pos += count

    def _object_header(self) -> bool:
        buf = self._buf
        if not buf:
            return False
        i, byte = 0, buf[0]
        kind, size, shift = (byte >> 4) & 7, byte & 15, 4
        while byte & 0x80:
            i += 1
            if i >= len(buf):
                return False
            if i > 10:
                raise PackError("object size too long")
            byte = buf[i]
            size |= (byte & 0x7F) << shift
            shift += 7
        i += 1
        obj = PackObject(kind, size, self._pos)
        if kind == OFS_DELTA:
            if (end := self._ofs_base(obj, i)) is None:
                return False
            i = end
        elif kind == REF_DELTA:
            if len(buf) < i + 20:
                return False
            obj.base = bytes(buf[i:i + 20])
            i += 20
        elif kind not in TYPE_NAMES:
            raise PackError(f"unknown object type {kind}")
        self._consume(i)
        self._begin(obj)
        return True

    def _ofs_base(self, obj: PackObject, i: int) -> int | None:
        buf, distance = self._buf, -1
        while True:
            if i >= len(buf):
                return None
            if i > 20:
                raise PackError("delta offset too long")
            byte = buf[i]
            distance = (distance + 1) << 7 | (byte & 0x7F) if distance >= 0 else byte & 0x7F
            i += 1
            if not byte & 0x80:
                break
        at = bisect_left(self._offsets, obj.offset - distance)
        if distance <= 0 or at == len(self._offsets) or self._offsets[at] != obj.offset - distance:
            raise PackError("delta base is not an object in this pack")
        obj.base = bytes(self._ids[20 * at:20 * at + 20])
        return i

    def _begin(self, obj: PackObject) -> None:
        self._obj, self._inflated = obj, 0
        self._z = zlib.decompressobj()
        self._offsets.append(obj.offset)
        self._ids += NO_OID
        if obj.is_delta:
            self._hash, self._delta = None, DeltaReader(self.sink)
        else:
            self._hash = hashlib.sha1(b"%s %d\0" % (TYPE_NAMES[obj.kind].encode(), obj.size))
            self._delta = None
        self._commit = bytearray() if obj.kind == OBJ_COMMIT and obj.size <= MAX_COMMIT_BYTES else None
        self.sink.begin(obj)
        self._state = "zlib"

    def _inflate(self) -> bool:
        if not self._buf:
            return False
        z = self._z
        assert z is not None
        pending = bytes(self._buf)
        self._consume(len(pending))
        while True:
            try:
                out = z.decompress(pending, STEP)
            except zlib.error as e:
                raise PackError(f"bad zlib data: {e}") from None
            self._inflated += len(out)
            if self._inflated > self._obj.size:
                raise PackError("object is larger than its header says")
            if out:
                self._content(out)
            pending = z.unconsumed_tail
            if z.eof or not pending:
                break
        if not z.eof:
            return False
        if self._inflated != self._obj.size:
            raise PackError("object is smaller than its header says")
        self._buf[:0] = z.unused_data
        self._pos -= len(z.unused_data)
        self._end()
        return True

    def _content(self, out: bytes) -> None:
        if self._delta is not None:
            self._delta.feed(out)
            return
        self._hash.update(out)
        if self._commit is not None:
            self._commit += out
        self.sink.data(out)

    def _end(self) -> None:
        obj = self._obj
        if self._delta is not None:
            self._delta.close()
        else:
            obj.oid = self._hash.digest()
        self._ids[-20:] = obj.oid or obj.base
        if self._commit is not None:
            self._record_commit(obj.oid.hex(), bytes(self._commit))
        self.sink.end(obj)
        self._remaining -= 1
        self._state = "object" if self._remaining else "trailer"

    def _record_commit(self, oid: str, content: bytes) -> None:
        lines = content.split(b"\n")
        parents = []
        if lines[0].startswith(b"tree "):
            self.commit_trees[oid] = lines[0][5:].decode("ascii", "replace")
        for line in lines[1:]:
            if not line.startswith(b"parent "):
                break
            parents.append(line[7:].decode("ascii", "replace"))
        self.commits[oid] = tuple(parents)
