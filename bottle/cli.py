"""The command line: parse flags, call one function per command, map errors to exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import click

from bottle import __version__
from bottle.backend import BACKENDS
from bottle.errors import BottleError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

engine_option = click.option(
    "--engine",
    type=click.Choice(["docker", "podman"]),
    help="The container engine (default: $BOTTLE_ENGINE, else whichever engine the client "
    "($BOTTLE_DOCKER, else docker or podman on PATH) reports).",
)


class _Commands(click.Group):
    """Shows a BottleError like any click error: `Error: <message>`, its own exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BottleError as e:
            error = click.ClickException(e.message)
            error.exit_code = e.exit_code
            raise error from None


def _backend(flag: str | None, manifest_choice: str | None, *, namespace: str | None = None,
             context: str | None = None, engine: str | None = None, planning: bool = False):
    """The one place that picks the backend: --backend, else the manifest's `backend`, else
    docker. `planning` (a dry-run) finds what the plan needs without refusing anything."""
    name = flag or manifest_choice or "docker"
    if name == "kubernetes":
        if engine:
            raise click.UsageError("--engine applies to the docker backend only")
        from bottle.backend.kubernetes.backend import KubernetesBackend

        return KubernetesBackend.from_environment(os.environ, namespace=namespace, context=context)
    if namespace or context:
        raise click.UsageError("--namespace and --context apply to the kubernetes backend only")
    from bottle.backend.docker.backend import DockerBackend

    return DockerBackend.from_environment(os.environ, engine=engine, planning=planning)


def _backend_options(command):
    for option in reversed((
        click.option("--backend", type=click.Choice(BACKENDS),
                     help="Where bottles run (default: the manifest's `backend`, else docker)."),
        engine_option,
        click.option("--namespace", metavar="NAME",
                     help="Kubernetes namespace (default: the manifest's kubernetes.namespace, else the "
                     "kubeconfig context's, else default)."),
        click.option("--context", "kube_context", metavar="NAME",
                     help="kubeconfig context (default: the manifest's kubernetes.context, else the current one)."),
    )):
        command = option(command)
    return command


@click.group(cls=_Commands, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="bottle")
def cli() -> None:
    """Run an autonomous coding agent in a bottle.

    Everything that leaves the agent is decrypted by an egress proxy, checked against the
    manifest's rules, scanned for secrets by pipelock, and logged. The agent never holds
    a real credential.
    """


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
def validate(manifest: Path) -> None:
    """Check a manifest and report every problem in it."""
    from bottle.manifest import load_manifest

    loaded = load_manifest(manifest)
    egress = loaded.data["egress"]
    click.echo(
        f"{manifest}: valid (bottle {loaded.data['name']!r}, {len(egress['allow'])} allow "
        f"rule{'s' if len(egress['allow']) != 1 else ''}, {len(egress['routes'])} credential "
        f"route{'s' if len(egress['routes']) != 1 else ''}, egress mode {egress['mode']})"
    )


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema (for editors: yaml-language-server `$schema`)."""
    from bottle.manifest import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--dry-run", is_flag=True, help="Show the whole plan and touch nothing.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Dry-run output format; json is a versioned contract (docs/dry-run-json.md).",
)
@click.option(
    "--egress-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proxy's JSON request log here (default: under $XDG_STATE_HOME/bottle/logs).",
)
@click.option(
    "--mode",
    type=click.Choice(["discover", "enforce"]),
    help="Override egress.mode for this run: discover logs what enforce would block and lets it through.",
)
@click.option("-d", "--detach", is_flag=True,
              help="Run in the background: print the bottle id and return once the agent runs "
              "(`bottle ps`, `logs --agent`, `exec`, `stop`, `wait`).")
@_backend_options
def start(manifest: Path, command: tuple[str, ...], dry_run: bool, output_format: str, egress_log: Path | None,
          mode: str | None, detach: bool, backend: str | None, engine: str | None, namespace: str | None,
          kube_context: str | None) -> None:
    """Start a bottle from MANIFEST and run the agent in it.

    Put a command after `--` to run it instead of the manifest's agent.command:

        bottle start examples/claude.yaml -- claude -p "fix the failing test"

    The agent's exit code becomes bottle's. With -d the bottle runs in the background and
    tears itself down when the agent exits.
    """
    from bottle import state
    from bottle.manifest import load_manifest
    from bottle.plan import new_run_id

    if output_format != "text" and not dry_run:
        raise click.UsageError("--format applies to --dry-run only")
    if detach and dry_run:
        raise click.UsageError("--detach and --dry-run do not go together")
    loaded = load_manifest(manifest)
    directory = state.bottles_dir(os.environ)
    run_id = new_run_id() if dry_run else _unique_run_id(loaded.data["name"], directory)
    try:
        chosen, backend_plan = _plan_start(loaded, command, run_id, mode=mode, backend=backend, engine=engine,
                                           namespace=namespace, kube_context=kube_context, planning=dry_run)
        if dry_run:
            if output_format == "json":
                click.echo(json.dumps(backend_plan.to_dict(), indent=2))
            else:
                click.echo(backend_plan.render_text(), nl=False)
            return
        bottle_id = backend_plan.bottle.bottle_id
        if detach:
            _start_detached(chosen, backend_plan, manifest, command, run_id, egress_log, mode, directory)
            click.echo(bottle_id)
            return
    except BaseException:
        if not dry_run:
            _unreserve(directory, f"bottle-{loaded.data['name']}-{run_id}")
        raise
    from bottle.run import run_bottle

    sys.exit(run_bottle(backend_plan, chosen, egress_log=egress_log, state_dir=directory))


def _plan_start(loaded, command: tuple[str, ...], run_id: str, *, mode: str | None, backend: str | None,
                engine: str | None, namespace: str | None, kube_context: str | None, planning: bool):
    """The backend and its plan for a start (foreground, detached, or the supervisor's)."""
    from bottle.plan import build_plan, proxy_image
    from bottle.workspace import owner_of

    plan = build_plan(loaded, env=os.environ, run_id=run_id, command=command or None,
                      proxy_image=proxy_image(os.environ), mode=mode, stat_workspace=owner_of)
    chosen = _backend(backend, loaded.data.get("backend"), namespace=namespace, context=kube_context,
                      engine=engine, planning=planning)
    return chosen, chosen.plan(plan)


def _unique_run_id(name: str, directory: Path) -> str:
    """A run id no bottle in this state directory has (claimed there, so two starts at once
    cannot both take it)."""
    from bottle import state
    from bottle.plan import new_run_id

    for _ in range(100):
        run_id = new_run_id()
        if state.reserve(directory, f"bottle-{name}-{run_id}"):
            return run_id
    raise BottleError(f"could not find a free bottle id in {directory}")


def _unreserve(directory: Path, bottle_id: str) -> None:
    """Drop a claimed id whose record was never written (the start failed before it ran)."""
    from bottle import state

    path = state.state_path(directory, bottle_id)
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _start_detached(chosen, backend_plan, manifest: Path, command: tuple[str, ...], run_id: str,
                    egress_log: Path | None, mode: str | None, directory: Path) -> None:
    from bottle.operations import start_detached

    if not chosen.supports_detached:
        from bottle.errors import NotSupportedError

        raise NotSupportedError(f"`bottle start -d` is not supported on the {chosen.name} backend yet; "
                                "run the bottle in the foreground (e.g. under nohup or tmux)")

    def argv(ready_fd: int) -> list[str]:
        options = ["--run-id", run_id, "--ready-fd", str(ready_fd), "--backend", chosen.name]
        engine = getattr(backend_plan, "engine", None)
        if engine:
            options += ["--engine", engine]
        if egress_log is not None:
            options += ["--egress-log", str(egress_log.resolve())]
        if mode:
            options += ["--mode", mode]
        return [sys.executable, "-m", "bottle", "_supervise", *options, str(manifest.resolve()), "--", *command]

    start_detached(argv, bottle_id=backend_plan.bottle.bottle_id, directory=directory,
                   echo_err=lambda line: click.echo(line, err=True))


@cli.command("_supervise", hidden=True)
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--run-id", required=True)
@click.option("--ready-fd", type=int, required=True)
@click.option("--egress-log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(["discover", "enforce"]))
@_backend_options
def supervise(manifest: Path, command: tuple[str, ...], run_id: str, ready_fd: int, egress_log: Path | None,
              mode: str | None, backend: str | None, engine: str | None, namespace: str | None,
              kube_context: str | None) -> None:
    """A detached bottle's supervisor (started by `bottle start -d`; docs/prds/0012)."""
    from bottle import state
    from bottle.manifest import load_manifest
    from bottle.operations import Supervisor
    from bottle.run import run_bottle

    directory = state.bottles_dir(os.environ)
    supervisor = Supervisor(ready_fd, directory, "")
    try:
        loaded = load_manifest(manifest)
        chosen, backend_plan = _plan_start(loaded, command, run_id, mode=mode, backend=backend, engine=engine,
                                           namespace=namespace, kube_context=kube_context, planning=False)
        supervisor.bottle_id = backend_plan.bottle.bottle_id
        supervisor.redirect_output()
        code = run_bottle(backend_plan, chosen, egress_log=egress_log, state_dir=directory, detached=True,
                          on_running=supervisor.running)
    except BaseException as e:
        supervisor.failed(e)
        raise
    supervisor.say(f"failed {code}\nthe bottle ended while starting (exit code {code})")
    sys.exit(code)


@cli.command()
@click.argument("log", metavar="BOTTLE_OR_LOGFILE")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the bottle stops.")
@click.option("--blocked", is_flag=True, help="Only requests that were blocked or would be (would_block).")
@click.option("--host", metavar="HOST", help="Only this host (or *.suffix).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json passes the log's own lines through (filters still apply).")
@click.option("--agent", is_flag=True, help="The agent's own output (a bottle started with -d) instead.")
def logs(log: str, follow: bool, blocked: bool, host: str | None, output_format: str, agent: bool) -> None:
    """Show a bottle's egress log: a log file, a bottle id, or the start of one (`claude`).

    Logs live in $XDG_STATE_HOME/bottle/logs/<bottle id>.jsonl; a name that matches several
    shows the newest. With --agent: what the agent of a detached bottle wrote (stdout and stderr).
    """
    from bottle import egresslog
    from bottle.logtable import FOLLOW_WIDTHS, Filters, Table

    if agent:
        if blocked or host or output_format != "table":
            raise click.UsageError("--blocked, --host and --format apply to the egress log, not --agent")
        _agent_logs(log, follow)
        return

    path, matches = egresslog.resolve_log(log, os.environ)
    if len(matches) > 1:
        click.echo(f"bottle: {len(matches)} logs match {log!r}; showing the newest: {path}", err=True)
    filters = Filters(blocked=blocked, host=host.lower() if host else None)
    if output_format == "json":
        show = lambda entry: click.echo(entry.raw)  # noqa: E731
    if not follow:
        if output_format == "table":  # a first pass over the file sizes the columns
            table = Table().fit(e for e in egresslog.iter_log(path) if filters.keep(e))
            click.echo(table.header())
            show = lambda entry: click.echo(table.row(entry))  # noqa: E731
        for entry in egresslog.iter_log(path):
            if filters.keep(entry):
                show(entry)
        return
    if output_format == "table":
        table = Table(FOLLOW_WIDTHS)
        click.echo(table.header())
        show = lambda entry: click.echo(table.row(entry))  # noqa: E731
    egresslog.follow(path, lambda entry: show(entry) if filters.keep(entry) else None)


def _agent_logs(ident: str, follow: bool) -> None:
    from bottle import egresslog, operations, state

    directory = _bottles_dir()
    record = state.resolve(ident, state.load_all(directory), directory)
    if not record.get("agent_output"):
        raise BottleError(f"{record['id']} ran in the foreground: its agent's output went to that terminal")
    path = Path(record["agent_output"])
    out = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    active = operations.still_running(directory, record["id"]) if follow else (lambda: False)
    egresslog.follow_bytes(path, write, active=active)


@cli.command("reload")
@click.argument("bottle_ref", metavar="ID")
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(["discover", "enforce"]), help="Override egress.mode, as for start.")
@click.option("--dry-run", is_flag=True, help="Check the manifest and show what would change; change nothing.")
@_backend_options
def reload_(bottle_ref: str, manifest: Path | None, mode: str | None, dry_run: bool, backend: str | None,
            engine: str | None, namespace: str | None, kube_context: str | None) -> None:
    """Apply MANIFEST's egress, git, GitHub and scanner policy to the running bottle ID, live.

    ID is a bottle id or a unique start of one. The manifest is checked first; a change
    that cannot apply while the bottle runs (images, networks, credentials, capture,
    workspace, resources) is refused, naming it, and the running policy stays.
    """
    from bottle.manifest import load_manifest
    from bottle.reload import reload_bottle
    from bottle.workspace import owner_of

    loaded = load_manifest(manifest) if manifest is not None else None
    chosen = _backend(backend, loaded.data.get("backend") if loaded else None, namespace=namespace,
                      context=kube_context, engine=engine)
    reload_bottle(chosen, bottle_ref, manifest, env=os.environ, mode=mode, dry_run=dry_run, echo=click.echo,
                  loaded=loaded, stat_workspace=owner_of)


@cli.group()
def policy() -> None:
    """Turn egress logs into policy, and check a policy against logged traffic.

    \b
    bottle start --mode discover M      log what enforce would block, let it through
    bottle policy suggest LOG...        a reviewable egress/git policy from the log
    bottle policy replay LOG... M       what M would block or allow of that traffic
    """


@policy.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Merge the suggestion into this manifest (printed; with --write, written in place).")
@click.option("--write", is_flag=True, help="Write the merged manifest back to --manifest, comments and order kept.")
def suggest(logs: tuple[Path, ...], manifest: Path | None, write: bool) -> None:
    """Suggest egress rules, credential routes and git repositories from egress logs.

    Prints a manifest to review. Hosts that look like telemetry or unknown third parties
    are listed but commented out.
    """
    from bottle import egresslog
    from bottle.manifest_edit import render_manifest
    from bottle.suggest import suggest_policy

    if write and manifest is None:
        raise click.UsageError("--write needs --manifest")
    entries = egresslog.read_logs(logs)
    if manifest is None:
        click.echo(render_manifest(suggest_policy(entries)), nl=False)
        return
    from bottle.manifest import load_manifest
    from bottle.manifest_edit import merge_suggestion

    loaded = load_manifest(manifest)
    suggestion = suggest_policy(entries, manifest=loaded)
    for note in suggestion.notes:
        click.echo(f"bottle: not suggested: {note}", err=True)
    text = merge_suggestion(manifest, suggestion)
    if not write:
        click.echo(text, nl=False)
        return
    if text == manifest.read_text(encoding="utf-8"):
        click.echo(f"{manifest}: nothing to add; the manifest already allows this traffic", err=True)
        return
    manifest.write_text(text, encoding="utf-8")
    click.echo(f"{manifest}: merged; review the change (e.g. git diff {manifest})", err=True)


@policy.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def replay(logs: tuple[Path, ...], manifest: Path, output_format: str) -> None:
    """Check MANIFEST against logged traffic with the proxy's own decision code.

    Reports what it would newly block (with the rule and reason), newly allow, and leave
    unchanged, and what the log cannot decide. Exits 1 when anything would newly be
    blocked, so CI can gate policy changes.
    """
    from bottle import egresslog
    from bottle.manifest import load_manifest
    from bottle.replay import render_report, replay_entries

    loaded = load_manifest(manifest)
    report = replay_entries(egresslog.read_logs(logs), loaded)
    if output_format == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render_report(report), nl=False)
    if report.newly_blocked:
        sys.exit(1)


@cli.command()
@click.option(
    "--base-image",
    "base_images",
    multiple=True,
    metavar="KIND=IMAGE",
    help="Override a base image: python=IMAGE (proxy) or node=IMAGE (agent). Repeatable.",
)
@click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust this CA bundle during the build only (behind a TLS-inspecting proxy). "
    "It is passed as a BuildKit secret and never stored in an image.",
)
@click.option("--only", type=click.Choice(["proxy", "agent", "pipelock"]), help="Build one image only.")
@click.option("--no-cache", is_flag=True, help="Build without Docker's layer cache.")
@click.option(
    "--pipelock-source",
    type=click.Path(exists=True, path_type=Path),
    metavar="ARCHIVE_OR_DIR",
    help="Also build the pipelock image from this source (archive checked against the pinned sha256) "
    "with the host's Go; for hosts that cannot pull the official image.",
)
@click.option(
    "--pipelock-sha256",
    metavar="HEX",
    help="Accept a pipelock source archive with this sha256 instead of the pinned v2.3.0 one.",
)
@engine_option
def build(base_images: tuple[str, ...], ca_cert: Path | None, only: str | None, no_cache: bool,
          pipelock_source: Path | None, pipelock_sha256: str | None, engine: str | None) -> None:
    """Build bottle's images (proxy and agent; pipelock with --pipelock-source)."""
    from bottle.backend.docker.build import build_images, check_request, parse_base_images
    from bottle.backend.docker.engine import resolve_engine
    from bottle.pipelock_source import PIPELOCK_SOURCE_SHA256, resolve_source
    from bottle.plan import proxy_image

    if pipelock_sha256 is not None and pipelock_source is None:
        raise click.UsageError("--pipelock-sha256 needs --pipelock-source")
    source = None
    if pipelock_source is not None:
        source = resolve_source(pipelock_source, expected_sha256=pipelock_sha256 or PIPELOCK_SOURCE_SHA256)
        if source.sha256 is None:
            click.echo(f"bottle: warning: building pipelock from the directory {source.path} as it is; "
                       "only an archive can be checked against a sha256", err=True)
    bases = parse_base_images(base_images)
    check_request(only, source)
    docker, found = resolve_engine(engine, os.environ)
    build_images(
        bases,
        docker=docker,
        engine=found,
        proxy_tag=proxy_image(os.environ),
        ca_cert=ca_cert,
        only=only,
        no_cache=no_cache,
        pipelock_source=source,
    )


@cli.command()
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json is a versioned contract (docs/doctor-json.md).")
@engine_option
def doctor(output_format: str, engine: str | None) -> None:
    """Check that this host can build and run bottles, and say how to fix what is missing.

    Exits 0 when everything `bottle start` needs is in place (warnings allowed), else 1.
    """
    from bottle.doctor import diagnose, render_text

    report = diagnose(engine, os.environ)
    if output_format == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render_text(report), nl=False)
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--all", "remove_all", is_flag=True, help="Also remove bottles whose `bottle start` is still running.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@_backend_options
def cleanup(remove_all: bool, dry_run: bool, backend: str | None, engine: str | None, namespace: str | None,
            kube_context: str | None) -> None:
    """Remove what a killed `bottle start` left behind (containers, volumes and networks, or
    Kubernetes objects)."""
    chosen = _backend(backend, None, namespace=namespace, context=kube_context, engine=engine)
    chosen.cleanup(remove_running=remove_all, dry_run=dry_run, echo=click.echo)


def _bottles_dir() -> Path:
    from bottle import state

    return state.bottles_dir(os.environ)


def _record_backend(record: dict):
    """The backend a recorded bottle runs on (its engine as recorded)."""
    return _backend(record.get("backend"), None, engine=record.get("engine") if record.get("backend") == "docker" else None)


def _components(records: list[dict]) -> dict[str, dict[str, str]]:
    """role -> status of the containers of every bottle that should be running, one engine
    call per backend and engine."""
    from bottle import state

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("state") == state.RUNNING and state.process_alive(r.get("supervisor")):
            groups.setdefault((r.get("backend"), r.get("engine")), []).append(r)
    found: dict[str, dict[str, str]] = {}
    for group in groups.values():
        try:
            found.update(_record_backend(group[0]).components([r["id"] for r in group]))
        except BottleError as e:
            click.echo(f"bottle: could not ask the engine about {len(group)} bottle(s): {e.message}", err=True)
    return found


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Also bottles that exited or failed.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json is a versioned document (docs/prds/0012-operating-bottles.md).")
def ps(show_all: bool, output_format: str) -> None:
    """List bottles: id, name, state, age, requests and blocked, agent command.

    The state is checked, not only recorded: a bottle whose supervising process is gone shows
    as dead, and one whose scanner or proxy container is not running says so.
    """
    from bottle import operations, state

    records = state.load_all(_bottles_dir())
    rows = operations.ps_rows(records, _components(records), show_all=show_all)
    if output_format == "json":
        click.echo(json.dumps(operations.ps_document(rows), indent=2))
    else:
        click.echo(operations.ps_table(rows), nl=False)


@cli.command()
@click.argument("bottles", nargs=-1, metavar="BOTTLE...")
@click.option("--all", "stop_all", is_flag=True, help="Every bottle in this state directory that is not ended.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds to wait for a teardown before removing the bottle's objects directly.")
def stop(bottles: tuple[str, ...], stop_all: bool, timeout: float) -> None:
    """Stop bottles (an id, the start of one, or a name) and wait until each is torn down.

    The bottle's own teardown runs, as for Ctrl-C in the foreground. One that does not finish
    within --timeout, or whose supervising process died, has its labelled objects removed
    directly (as `bottle cleanup` does).
    """
    from bottle import operations, state

    if bool(bottles) == stop_all:
        raise click.UsageError("name the bottles to stop, or give --all")
    directory = _bottles_dir()
    records = state.load_all(directory)
    if stop_all:
        targets = [r for r in records if r.get("state") not in state.FINAL]
    else:
        targets, seen = [], set()
        for ident in bottles:
            record = state.resolve(ident, records, directory)
            if record["id"] not in seen:
                seen.add(record["id"])
                targets.append(record)
    signalled, orphaned = [], []
    for record in targets:
        if record.get("state") in state.FINAL:
            click.echo(f"bottle: {record['id']} already {operations.state_text(record, record['state'], [])}", err=True)
        elif operations.signal_supervisor(record):
            click.echo(f"bottle: stopping {record['id']}", err=True)
            signalled.append(record)
        else:
            orphaned.append(record)
    stuck = operations.wait_gone(signalled, timeout)
    failures = 0
    for record in signalled:
        if record in stuck:
            continue
        final = state.read(state.state_path(directory, record["id"])) or record
        if final.get("state") in state.FINAL:
            click.echo(record["id"])
        else:
            orphaned.append(final)  # it ended without recording its end
    for record in stuck:
        click.echo(f"bottle: {record['id']} was not torn down within {timeout:g} s; killing its supervisor "
                   "and removing its objects directly", err=True)
        with contextlib.suppress(OSError):
            os.kill(record["supervisor"]["pid"], signal.SIGKILL)
    for record in orphaned:
        if record not in stuck:
            click.echo(f"bottle: the process running {record['id']} is gone; removing its objects directly",
                       err=True)
    for record in [*stuck, *orphaned]:
        try:
            _record_backend(record).remove_bottle(record["id"], echo=lambda line: click.echo(f"bottle: {line}", err=True))
        except BottleError as e:
            click.echo(f"bottle: could not remove what {record['id']} left: {e.message}", err=True)
            failures += 1
            continue
        state.update(directory, record["id"], state=state.EXITED, ended=state.now(),
                     error="stopped: its objects were removed directly")
        click.echo(record["id"])
    if failures:
        sys.exit(1)


@cli.command()
@click.argument("bottle_ref", metavar="BOTTLE")
def wait(bottle_ref: str) -> None:
    """Block until the bottle's agent exits (and the bottle is torn down); print its exit code
    and exit with it."""
    from bottle import operations, state

    directory = _bottles_dir()
    record = state.resolve(bottle_ref, state.load_all(directory), directory)
    final = operations.wait_final(directory, record["id"])
    if final.get("state") == state.FAILED:
        raise BottleError(f"{record['id']} failed: {final.get('error')}")
    code = final.get("exit_code")
    if code is None:
        raise BottleError(f"{record['id']} ended without an exit code: {final.get('error') or 'unknown'}")
    click.echo(code)
    sys.exit(code)


@cli.command("exec", context_settings={"ignore_unknown_options": False})
@click.argument("bottle_ref", metavar="BOTTLE")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True,
              help="Pass standard input (always done; accepted as with docker exec).")
@click.option("-t", "--tty", is_flag=True,
              help="Give the command a terminal (the default when stdin and stdout are terminals and -i is not given alone).")
def exec_(bottle_ref: str, command: tuple[str, ...], interactive: bool, tty: bool) -> None:
    """Run COMMAND in a running bottle's agent: as the agent's user, with the agent's
    environment (proxy variables, CA bundle, placeholders) and none of this shell's.

        bottle exec ID -- sh
    """
    from bottle import operations, state

    directory = _bottles_dir()
    records = state.load_all(directory)
    record = state.resolve(bottle_ref, records, directory)
    live, problems = operations.live_state(record, None)
    if live != state.RUNNING:
        raise BottleError(f"{record['id']} is not running ({operations.state_text(record, live, problems)}); "
                          "exec needs a running bottle")
    if not tty and not interactive:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = _record_backend(record).exec_argv(record["id"], command, stdin=True, tty=tty)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a shell completion script: eval "$(bottle completion bash)"."""
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None
    click.echo(completion_class(cli, {}, "bottle", "_BOTTLE_COMPLETE").source())


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="bottle", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
