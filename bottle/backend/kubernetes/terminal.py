"""Run a command in a Pod's container the way `docker exec -i [-t]` does: stdin forwarded
(and closed at its end), stdout and stderr copied as bytes, the exit code returned; in a
terminal, raw mode and the window size."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from bottle.errors import BackendError

STDIN, RESIZE = 0, 4


def run_exec(cluster: Any, namespace: str, pod: str, container: str, command: Sequence[str], *,
             interactive: bool) -> int:
    session = cluster.exec(namespace, pod, container, command, stdin=True, tty=interactive)
    try:
        with _terminal(session) if interactive else contextlib.nullcontext():
            threading.Thread(target=_forward_stdin, args=(session,), name="bottle-stdin", daemon=True).start()
            while session.is_open():
                session.update(timeout=0.5)
                _copy_output(session)
            _copy_output(session)
        try:
            return session.returncode
        except Exception:  # the status channel never arrived
            raise BackendError(f"the connection to {pod}/{container} ended before the command's exit status "
                               "arrived") from None
    finally:
        session.close()


def _copy_output(session: Any) -> None:
    for read, stream in ((session.read_stdout, sys.stdout), (session.read_stderr, sys.stderr)):
        data = read(timeout=0)
        if data:
            stream.buffer.write(data)
            stream.flush()


def _forward_stdin(session: Any) -> None:
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    with contextlib.suppress(Exception):  # the session may end first
        while fd is not None:
            data = os.read(fd, 65536)
            if not data:
                break
            session.write_stdin(data)
        session.close_channel(STDIN)


@contextlib.contextmanager
def _terminal(session: Any) -> Iterator[None]:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def resize(*_: Any) -> None:
        with contextlib.suppress(Exception):
            size = os.get_terminal_size(fd)
            if size.columns and size.lines:
                session.write_channel(RESIZE, json.dumps({"Width": size.columns, "Height": size.lines}).encode())

    previous = signal.signal(signal.SIGWINCH, resize)
    # TCSANOW: what was typed while the bottle started is kept, not flushed.
    tty.setraw(fd, termios.TCSANOW)
    resize()
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
