"""The command line: parse flags, call one function per command, map errors to exit codes."""

from __future__ import annotations

import json
import os
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
@_backend_options
def start(manifest: Path, command: tuple[str, ...], dry_run: bool, output_format: str, egress_log: Path | None,
          mode: str | None, backend: str | None, engine: str | None, namespace: str | None,
          kube_context: str | None) -> None:
    """Start a bottle from MANIFEST and run the agent in it.

    Put a command after `--` to run it instead of the manifest's agent.command:

        bottle start examples/claude.yaml -- claude -p "fix the failing test"

    The agent's exit code becomes bottle's.
    """
    from bottle.manifest import load_manifest
    from bottle.plan import build_plan, new_run_id, proxy_image
    from bottle.workspace import owner_of

    loaded = load_manifest(manifest)
    plan = build_plan(loaded, env=os.environ, run_id=new_run_id(), command=command or None,
                      proxy_image=proxy_image(os.environ), mode=mode, stat_workspace=owner_of)
    if output_format != "text" and not dry_run:
        raise click.UsageError("--format applies to --dry-run only")
    chosen = _backend(backend, loaded.data.get("backend"), namespace=namespace, context=kube_context,
                      engine=engine, planning=dry_run)
    backend_plan = chosen.plan(plan)
    if dry_run:
        if output_format == "json":
            click.echo(json.dumps(backend_plan.to_dict(), indent=2))
        else:
            click.echo(backend_plan.render_text(), nl=False)
        return
    from bottle.run import run_bottle

    sys.exit(run_bottle(backend_plan, chosen, egress_log=egress_log))


@cli.command()
@click.argument("log", metavar="BOTTLE_OR_LOGFILE")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the bottle stops.")
@click.option("--blocked", is_flag=True, help="Only requests that were blocked or would be (would_block).")
@click.option("--host", metavar="HOST", help="Only this host (or *.suffix).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json passes the log's own lines through (filters still apply).")
def logs(log: str, follow: bool, blocked: bool, host: str | None, output_format: str) -> None:
    """Show a bottle's egress log: a log file, a bottle id, or the start of one (`claude`).

    Logs live in $XDG_STATE_HOME/bottle/logs/<bottle id>.jsonl; a name that matches several
    shows the newest.
    """
    from bottle import egresslog
    from bottle.logtable import FOLLOW_WIDTHS, Filters, Table

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
