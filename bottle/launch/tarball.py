"""Files for a container as one tar stream (`docker cp -`, or stdin of `bottle.mitm.receive`)."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Mapping


def tar_of(files: Mapping[str, bytes], *, mode: int = 0o400, uid: int = 0, gid: int = 0) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            info.uid, info.gid = uid, gid
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
