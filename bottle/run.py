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
from collections.abc import Callable, Mapping
from pathlib import Path

from bottle import egresslog, state
from bottle.backend.base import BackendPlan, P, BottleBackend
from bottle.egresslog import default_log_path
from bottle.errors import BottleError, LogError
from bottle.launch.secrets import make_secrets
from bottle.signals import Terminated, signals_ignored, signals_raise

__all__ = ["default_log_path", "run_bottle"]


def run_bottle(backend_plan: P, backend: BottleBackend[P], *, egress_log: Path | None = None,
               env: Mapping[str, str] | None = None, state_dir: Path | None = None,
               detached: bool = False, on_running: Callable[[], None] | None = None) -> int:
    """Launch `backend_plan` (made by `backend.plan()`) and run its agent; returns the exit code.

    With `state_dir`, the run is recorded there for `bottle ps|stop|wait|exec` (bottle/state.py);
    `detached` runs the agent without a terminal (a supervisor's, docs/prds/0012) and
    `on_running` is called once the agent command runs."""
    env = os.environ if env is None else env
    plan = backend_plan.bottle
    log_path = egress_log or default_log_path(plan.bottle_id, env)
    record = _Record(state_dir, backend_plan, backend, log_path, detached)
    launch_secrets = make_secrets(plan.bottle_id, plan.egress.token_refs)
    for ref in plan.missing_credentials:
        print(f"bottle: warning: {ref} is not set; requests on its credential routes will be refused",
              file=sys.stderr)
    interactive = not detached and sys.stdin.isatty() and sys.stdout.isatty()
    stack = contextlib.ExitStack()
    code: int | None = None
    error: BaseException | None = None
    try:
        with signals_raise():
            record.save()
            stack.enter_context(contextlib.closing(_TeardownGuard()))
            # Released last, once the log is complete: `bottle logs -f` follows until then.
            stack.enter_context(egresslog.writing(log_path))
            print(f"bottle: starting {plan.bottle_id}", file=sys.stderr)
            running = stack.enter_context(backend.launch(backend_plan, launch_secrets, env=env))
            print(f"bottle: mitm ca fingerprint: {launch_secrets.ca.short_fingerprint}…", file=sys.stderr)
            print(f"bottle: egress log: {log_path}", file=sys.stderr)
            stack.enter_context(backend.follow_egress_log(running, log_path))
            stack.enter_context(backend.watch(running, _say))
            record.save(state=state.RUNNING)
            if on_running is not None:
                on_running()
            code = backend.run_agent(running, plan.agent.command, interactive=interactive)
            return code
    except Terminated as e:
        print(f"bottle: {e} received, tearing down {plan.bottle_id}", file=sys.stderr)
        code = 128 + e.signum
        return code
    except BaseException as e:
        error = e
        raise
    finally:
        with signals_ignored():
            stack.close()
            _print_summary(log_path)
            record.finish(code, error)


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


class _Record:
    """The run's state file (bottle/state.py), when there is a state directory: `finish`
    writes how it ended once teardown is complete, so `bottle wait` returns with nothing left."""

    def __init__(self, directory: Path | None, backend_plan: BackendPlan, backend: BottleBackend,
                 log_path: Path, detached: bool) -> None:
        self.directory = directory
        if directory is None:
            return
        plan = backend_plan.bottle
        self.record = state.new_record(
            bottle_id=plan.bottle_id, name=plan.name, manifest=plan.manifest, backend=backend.name,
            engine=getattr(backend_plan, "engine", None), command=plan.agent.command, egress_log=log_path,
            agent_output=state.agent_output_path(directory, plan.bottle_id) if detached else None,
            detached=detached, token_refs=plan.egress.token_refs)

    def save(self, **changes) -> None:
        if self.directory is None:
            return
        self.record.update(changes)
        state.write(self.directory, self.record)

    def finish(self, code: int | None, error: BaseException | None) -> None:
        if self.directory is None:
            return
        if code is None and isinstance(error, KeyboardInterrupt):
            code = 130
        if code is not None or error is None:
            self.save(state=state.EXITED, exit_code=code, ended=state.now())
        else:
            message = error.message if isinstance(error, BottleError) else f"{type(error).__name__}: {error}"
            self.save(state=state.FAILED, error=message, ended=state.now())


class _TeardownGuard:
    """Marks the bottom of the stack; closing it prints that teardown finished."""

    def close(self) -> None:
        print("bottle: torn down", file=sys.stderr)
