"""Run one bottle: make its secrets, launch it, run the agent, tear it all down.

Teardown is one ExitStack unwound on every way out: normal exit, an error, Ctrl-C,
SIGTERM and SIGHUP (both turned into an exception here, since Python only raises for
SIGINT). While tearing down, further signals are ignored so a second Ctrl-C cannot
leave resources behind; `bottle cleanup` handles SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from bottle import egresslog
from bottle.backend.base import P, BottleBackend
from bottle.egresslog import default_log_path
from bottle.errors import LogError
from bottle.launch.secrets import make_secrets
from bottle.signals import Terminated, signals_ignored, signals_raise

__all__ = ["default_log_path", "run_bottle"]


def run_bottle(backend_plan: P, backend: BottleBackend[P], *, egress_log: Path | None = None,
               env: Mapping[str, str] | None = None) -> int:
    """Launch `backend_plan` (made by `backend.plan()`) and run its agent; returns the exit code."""
    env = os.environ if env is None else env
    plan = backend_plan.bottle
    log_path = egress_log or default_log_path(plan.bottle_id, env)
    launch_secrets = make_secrets(plan.bottle_id, plan.egress.token_refs)
    for ref in plan.missing_credentials:
        print(f"bottle: warning: {ref} is not set; requests on its credential routes will be refused",
              file=sys.stderr)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    stack = contextlib.ExitStack()
    try:
        with signals_raise():
            stack.enter_context(contextlib.closing(_TeardownGuard()))
            # Released last, once the log is complete: `bottle logs -f` follows until then.
            stack.enter_context(egresslog.writing(log_path))
            print(f"bottle: starting {plan.bottle_id}", file=sys.stderr)
            running = stack.enter_context(backend.launch(backend_plan, launch_secrets, env=env))
            print(f"bottle: mitm ca fingerprint: {launch_secrets.ca.short_fingerprint}…", file=sys.stderr)
            print(f"bottle: egress log: {log_path}", file=sys.stderr)
            stack.enter_context(backend.follow_egress_log(running, log_path))
            stack.enter_context(backend.watch(running, _say))
            return backend.run_agent(running, plan.agent.command, interactive=interactive)
    except Terminated as e:
        print(f"bottle: {e} received, tearing down {plan.bottle_id}", file=sys.stderr)
        return 128 + e.signum
    finally:
        with signals_ignored():
            stack.close()
            _print_summary(log_path)


def _say(message: str) -> None:
    print(f"bottle: {message}", file=sys.stderr, flush=True)


def _print_summary(log_path: Path) -> None:
    """One line: how many requests, how many blocked, and where the log is."""
    if not log_path.is_file() or log_path.stat().st_size == 0:
        return
    try:
        print(egresslog.summary(egresslog.read_log(log_path), log_path), file=sys.stderr)
    except LogError as e:
        print(f"bottle: log: {log_path} ({e.message})", file=sys.stderr)


class _TeardownGuard:
    """Marks the bottom of the stack; closing it prints that teardown finished."""

    def close(self) -> None:
        print("bottle: torn down", file=sys.stderr)
