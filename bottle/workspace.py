"""The host side of agent.workspace: who owns the directory (the plan decides the rest)."""

from __future__ import annotations

import errno
import os
import stat

from bottle.plan import WorkspaceOwner


def owner_of(path: str) -> WorkspaceOwner:
    """The workspace directory's owner and mode; OSError when it is missing or no directory."""
    found = os.stat(path)
    if not stat.S_ISDIR(found.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return WorkspaceOwner(uid=found.st_uid, gid=found.st_gid, mode=stat.S_IMODE(found.st_mode))
