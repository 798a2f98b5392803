"""Signals as exceptions while a bottle runs, and ignored while it is torn down."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType


class Terminated(BaseException):
    """Raised in the main thread when bottle receives SIGTERM or SIGHUP.

    A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    # A SIGHUP ignored by whoever started bottle (nohup) stays ignored, as Unix tools do.
    sigs = [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else [signal.SIGHUP])
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While tearing down, a second Ctrl-C or SIGTERM must not leave resources behind."""

    def note(signum: int, _frame: FrameType | None) -> None:
        print(f"bottle: {signal.Signals(signum).name} received while tearing down; finishing teardown first",
              file=sys.stderr)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, note) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
