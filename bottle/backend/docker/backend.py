"""The Docker backend: launch a DockerBottlePlan, run the agent, tear everything down.

It drives Docker or Podman (engine.py); where the two answer differently, the
difference is handled here next to a comment saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from bottle.backend.base import KEEP_ENV, BottleBackend, RunningBottle, owner_alive, owner_label
from bottle.backend.docker import plan as dp
from bottle.backend.docker import watch as watching
from bottle.backend.docker.cli import DockerCLI
from bottle.backend.docker import engine as engines
from bottle.backend.docker.engine import DOCKER, Engine
from bottle.errors import BackendError, LiveError, StartError
from bottle.launch import capture
from bottle.launch.pipelock_config import render_pipelock_config
from bottle.launch.policy_file import SCANNER_MAX_BODY_BYTES, proxy_files
from bottle.launch.tarball import tar_of as _tar
from bottle.mitm.receive import EXIT_UNREACHABLE
from bottle.mitm.reload import merge_update
from bottle.reload import LiveBottle, forget_update, saved_update
from bottle.launch.secrets import LaunchSecrets
from bottle.plan import SCANNER_PORT, BottlePlan
from bottle.signals import signals_ignored

READY_TIMEOUT = 60.0
RECEIVE = ("/opt/bottle-proxy/bin/python", "-m", "bottle.mitm.receive")
# Seconds the proxy waits for the agent's kernel to answer on the agent network.
REACH_TIMEOUT = 3.0

# What the engines say when a create names an image they do not have and cannot pull.
MISSING_IMAGE = (
    "Unable to find image", "No such image", "pull access denied",  # Docker
    "did not resolve to an alias", "image not known", "initializing source",  # Podman
)

# Run as root inside the agent before its command. The certificate goes where
# update-ca-certificates looks for local CAs, so it survives any later rebuild of the
# store; the merged bundle that SSL_CERT_FILE and friends point at (public roots + bottle
# CA) gets it appended, and OpenSSL's hashed directory gets its link. That is what
# update-ca-certificates would do, in 0.1 s instead of the 1.1 s its full rebuild takes
# (benchmarks/); images without a bundle fall back to update-ca-certificates itself.
INSTALL_CA_SCRIPT = r"""
set -eu
ca=/usr/local/share/ca-certificates/bottle-egress-ca.crt
bundle=/etc/ssl/certs/ca-certificates.crt
mkdir -p /usr/local/share/ca-certificates
cat > "$ca"
chmod 0644 "$ca"
if [ -f "$bundle" ]; then
  cat "$ca" >> "$bundle"
  ln -sf "$ca" /etc/ssl/certs/bottle-egress-ca.pem
  if command -v openssl >/dev/null 2>&1; then
    ln -sf bottle-egress-ca.pem "/etc/ssl/certs/$(openssl x509 -hash -noout -in "$ca").0"
  fi
elif command -v update-ca-certificates >/dev/null 2>&1; then
  update-ca-certificates >/dev/null 2>&1 || update-ca-certificates >&2
else
  echo "the agent image has no CA bundle at $bundle and no update-ca-certificates (install ca-certificates)" >&2
  exit 3
fi
grep -qF "$(sed -n 2p "$ca")" "$bundle"
"""


class DockerBackend(BottleBackend[dp.DockerBottlePlan]):
    name = "docker"

    def __init__(
        self,
        docker: DockerCLI | None = None,
        *,
        env: Mapping[str, str] | None = None,
        engine: Engine = DOCKER,
        engine_note: str | None = None,
    ) -> None:
        self._docker = docker
        self._health_tests: dict[str, list[str]] = {}
        self.env = os.environ if env is None else env
        self.engine = engine
        self.engine_note = engine_note
        self._live: dict[str, _Live] = {}  # by proxy container name
        self._followers: dict[str, _LogFollower] = {}

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, *, engine: str | None = None, planning: bool = False
    ) -> DockerBackend:
        """The backend for the engine asked for (`--engine`, `$BOTTLE_ENGINE`) or found.
        `planning` (a dry-run) touches no engine it cannot ask and refuses nothing: the
        plan says which engine it assumed and whether start would refuse it."""
        env = os.environ if env is None else env
        if planning:
            name, note = engines.plan_engine(engine, env)
            return cls(env=env, engine=Engine(name=name), engine_note=note)
        docker, found = engines.resolve_engine(engine, env)
        engines.require_supported(found)
        return cls(docker, env=env, engine=found)

    @property
    def docker(self) -> DockerCLI:
        # Found on first use, so a dry-run works where no engine client is installed.
        if self._docker is None:
            self._docker = engines.client_for(self.engine.name, self.env)
        return self._docker

    @property
    def podman(self) -> bool:
        return self.engine.name == "podman"

    def plan(self, bottle: BottlePlan) -> dp.DockerBottlePlan:
        return dp.docker_plan(bottle, self.engine.name, engine_note=self.engine_note)

    # -- launch -------------------------------------------------------------------

    @contextlib.contextmanager
    def launch(self, plan: dp.DockerBottlePlan, secrets: LaunchSecrets, *, env: Mapping[str, str]) -> Iterator[RunningBottle]:
        keep = bool(self.env.get(KEEP_ENV))
        substitutions = {dp.OWNER: owner_label()}
        for ref, value in secrets.placeholders.items():
            substitutions[dp.placeholder_marker(ref)] = value
        created = _Created()
        try:
            yield self._start(plan, secrets, env, substitutions, created)
        finally:
            # Also when the start fails half-way: remove what was made before the error
            # propagates, with signals held off so a second Ctrl-C cannot interrupt it.
            with signals_ignored():
                self._teardown(created, keep)

    def _start(
        self,
        plan: dp.DockerBottlePlan,
        secrets: LaunchSecrets,
        env: Mapping[str, str],
        substitutions: dict[str, str],
        created: _Created,
    ) -> RunningBottle:
        for network in plan.networks:
            if not network.create and not self.docker.ok(["network", "inspect", network.name]):
                raise StartError(
                    f"the Docker network {network.name!r} named by docker.egress_network does not exist",
                    tip=f"create it first: docker network create {network.name}",
                )
        # Independent steps run side by side; each thread records what it made before
        # it returns, and every thread is joined before teardown can run.
        with _Workers() as workers:
            for network in plan.networks:
                if network.create:
                    workers.submit(self._make, created, "network", network.name, dp.network_create_argv(network))
            for volume in plan.volumes:
                workers.submit(self._make, created, "volume", volume.name, dp.volume_create_argv(volume))
        pipelock, proxy, agent = (plan.container(role) for role in ("pipelock", "proxy", "agent"))
        agent_network = plan.network("agent").name
        # On an error, `stopping` lets the scanner thread stop waiting for health at once.
        with _Workers(stop=created.stopping) as workers:
            scanner_host = workers.submit(self._start_scanner, plan, pipelock, secrets, substitutions, created)
            self._create(proxy, substitutions, created, env=env)
            for connect in [workers.submit(self.docker.run, argv) for argv in dp.connect_argv(proxy)]:
                connect.result()
            self._start_container(proxy.name)
            proxy_ip = self._address(proxy.name, agent_network)
            substitutions[dp.PROXY_IP] = proxy_ip
            self._create(agent, substitutions, created)
            self._start_container(agent.name)
            agent_ip = self._address(agent.name, agent_network)
            # The CA goes into the agent's trust store while the proxy gets its policy and
            # starts serving; the agent command itself only runs after both.
            workers.submit(self._install_ca, agent.name, secrets.ca.cert_pem)
            reach = None
            if plan.capture is not None:
                # The capture goes in after the reach check (its rules pass the agent's reply
                # only for a connection they saw begin) and while the proxy starts serving;
                # it is done (the _Workers block waits) before the agent command can run.
                reach = workers.submit(self._check_reach, proxy.name, agent_ip, agent_network)
                workers.submit(self._capture_after, reach, plan.capture, dict(substitutions), created)
            scanner = scanner_host.result()
            files = {
                "mitmproxy-ca.pem": secrets.ca.mitmproxy_pem,
                **proxy_files(plan.bottle, secrets, agent_ip=agent_ip, proxy_ip=proxy_ip, run_dir=dp.RUN_DIR,
                              scanner_url=f"http://{scanner}:{SCANNER_PORT}/api/v1/scan"),
            }
            # Without a capture, the reach check rides in the delivery's exec.
            self._deliver_to_proxy(proxy.name, files, agent_network=agent_network,
                                   reach=agent_ip if reach is None else None)
        report = None
        if plan.capture is not None:
            report = tuple(_substitute(a, substitutions) for a in dp.run_argv(plan.capture.report))
        # What the watcher needs to hand a restarted proxy its files again (bottle/backend/docker/watch.py).
        self._live[proxy.name] = _Live(plan=plan, secrets=secrets, agent_ip=agent_ip, proxy_ip=proxy_ip,
                                       scanner=pipelock.name, scanner_host=scanner)
        return RunningBottle(
            bottle_id=plan.bottle.bottle_id,
            agent=agent.name,
            proxy=proxy.name,
            scanner=pipelock.name,
            addresses={"proxy": proxy_ip, "agent": agent_ip},
            capture_report=report,
        )

    def _start_scanner(
        self,
        plan: dp.DockerBottlePlan,
        pipelock: dp.ContainerSpec,
        secrets: LaunchSecrets,
        substitutions: Mapping[str, str],
        created: _Created,
    ) -> str:
        """Start pipelock and wait until it is healthy; returns the host name or address
        the proxy reaches it by."""
        self._create(pipelock, dict(substitutions), created)
        config = render_pipelock_config(
            scan_listen=f"0.0.0.0:{SCANNER_PORT}",
            main_listen=dp.PIPELOCK_MAIN_LISTEN,
            token=secrets.scanner_token,
            max_body_bytes=SCANNER_MAX_BODY_BYTES * 2,
        )
        # `podman cp` chowns what it copies to the container's user unless told not to,
        # which would let pipelock rewrite its own configuration; the tar says root.
        cp = ["cp", "--archive=false"] if self.podman else ["cp"]
        self.docker.run(
            [*cp, "-", f"{pipelock.name}:{dp.PIPELOCK_CONFIG_DIR}"],
            input=_tar({"pipelock.yaml": config.encode()}, mode=0o444),
        )
        self._start_container(pipelock.name)
        self._wait_healthy(pipelock.name, created.stopping)
        return pipelock.alias or self._address(pipelock.name, pipelock.network)

    def _start_container(self, name: str) -> None:
        try:
            self.docker.run(["start", name])
        except BackendError as e:
            if "error setting rlimit" not in e.message:
                raise
            # Rootful Podman raises the open-files and process limits to 1048576, which
            # needs CAP_SYS_RESOURCE; inside another container or sandbox root may lack it.
            raise BackendError(
                e.message,
                tip="root here cannot raise resource limits; set limits it can give in containers.conf "
                "([containers] default_ulimits = [\"nofile=N:N\", \"nproc=N:N\"] with N no more than "
                "`ulimit -Hn` and `ulimit -Hu`)",
            ) from None

    def _make(self, created: _Created, kind: str, name: str, argv: list[str]) -> None:
        self.docker.run(argv)
        created.add(kind, name)

    def _create(
        self,
        container: dp.ContainerSpec,
        substitutions: Mapping[str, str],
        created: _Created,
        env: Mapping[str, str] | None = None,
    ) -> None:
        argv = [_substitute(arg, substitutions) for arg in dp.create_argv(container)]
        # Secrets reach `docker create` through its environment (`--env NAME`), never argv.
        names = {var.name for var in container.env if var.value is None}
        child_env = {k: v for k, v in os.environ.items() if k not in names}
        if env is not None:
            child_env.update({name: env[name] for name in names if env.get(name)})
        # Record the name first: a create that fails half-way may still leave a container.
        created.add("container", container.name)
        try:
            self.docker.run(argv, env=child_env)
        except BackendError as e:
            if any(s in e.message for s in MISSING_IMAGE):
                detail = e.message.split("stderr:", 1)[-1].strip()
                raise StartError(
                    f"the {container.role} image {container.image} is not available here and could not be "
                    f"pulled:\n  {detail}",
                    tip="build bottle's images with `bottle build`, or set the image in the manifest",
                ) from None
            raise

    def _teardown(self, created: _Created, keep: bool) -> None:
        created.stopping.set()
        containers = list(reversed(created.names["container"]))
        if containers:
            self._remove("container", containers, keep)
        # With the containers gone nothing uses the volumes and networks: remove them
        # side by side (one call each; the engine removes one call's names in turn).
        with _Workers() as workers:
            for kind in ("volume", "network"):
                for name in reversed(created.names[kind]):
                    workers.submit(self._remove, kind, [name], keep)

    def _remove(self, kind: str, names: list[str], keep: bool) -> None:
        if keep:
            for name in names:
                print(f"bottle: {KEEP_ENV} is set, keeping {kind} {name}", file=sys.stderr)
            return
        args = {
            # Docker's `rm --force` kills at once; Podman's first waits up to 10 s for SIGTERM.
            # Podman 4.3 removes nothing, and exits 0, when one name is already gone (a
            # helper run with --rm) unless told to --ignore it.
            "container": ["rm", "--force", "--volumes", *(["--time", "0", "--ignore"] if self.podman else [])],
            "volume": ["volume", "rm", "--force"],
            "network": ["network", "rm"],
        }[kind]
        remaining = list(names)
        stderr = ""
        for attempt in range(3):
            try:
                result = self.docker.run([*args, *remaining], check=False, timeout=60)
            except BackendError as e:
                stderr = e.message
                break
            stderr = result.stderr.decode(errors="replace")
            if result.returncode == 0:
                return
            # Keep only what still exists; "No such ..." or "... not found" means it is
            # already gone (Docker and Podman word it differently).
            remaining = [n for n in remaining if n in stderr and not _gone(_line_for(stderr, n))]
            if not remaining:
                return
            time.sleep(0.2 * (attempt + 1))
        print(
            f"bottle: warning: could not remove {kind} {', '.join(remaining)}: {stderr.strip()}\n"
            "  `bottle cleanup` removes it later.",
            file=sys.stderr,
        )

    def _address(self, container: str, network: str) -> str:
        template = f'{{{{with index .NetworkSettings.Networks "{network}"}}}}{{{{.IPAddress}}}}{{{{end}}}}'
        address = self.docker.output(["inspect", "--format", template, container])
        if not address:
            raise StartError(f"container {container} has no address on network {network}")
        return address

    def _wait_healthy(self, container: str, stopping: threading.Event) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not stopping.is_set():
            if self.podman:
                # Podman runs health checks from systemd timers; without systemd they never
                # run, so run one now (its result lands in .State.Health like Docker's).
                self.docker.run(["healthcheck", "run", container], check=False, timeout=30)
            elif self._probe_health(container):
                # Docker checks only every HEALTH_INTERVAL (cheap while the bottle runs);
                # start runs the image's own check itself instead of waiting for the first.
                return
            state = json.loads(self.docker.output(["inspect", "--format", "{{json .State}}", container]))
            status = state.get("Status")
            health = (state.get("Health") or {}).get("Status") or None
            if status in ("exited", "dead", "removing") or health == "unhealthy":
                raise StartError(
                    f"the scanner container {container} is {health or status} (exit code {state.get('ExitCode')})\n"
                    + self._logs_excerpt(container)
                )
            if health == "healthy" or (health is None and status == "running"):
                return
            if time.monotonic() > deadline:
                raise StartError(
                    f"the scanner container {container} was not healthy after {READY_TIMEOUT:g} s "
                    f"(health: {health})\n" + self._logs_excerpt(container)
                )
            time.sleep(0.1)

    def _probe_health(self, container: str) -> bool:
        """Run the container's health check command now, as Docker would (it has no
        `healthcheck run`); True when it passes. Without a check: whether it runs."""
        test = self._health_tests.get(container)
        if test is None:
            config = self.docker.run(["inspect", "--type", "container", "--format", "{{json .Config.Healthcheck}}",
                                      container], check=False)
            try:
                found = (json.loads(config.stdout or b"null") or {}).get("Test") or []
            except (ValueError, AttributeError):
                found = []
            test = self._health_tests[container] = health_test_argv(found)
        if not test:
            return False  # no check to run: the caller reads the state
        return self.docker.run(["exec", container, *test], check=False, timeout=30).returncode == 0

    def _logs_excerpt(self, container: str) -> str:
        result = self.docker.run(["logs", "--tail", "30", container], check=False)
        text = (result.stdout + result.stderr).decode(errors="replace").strip()
        return "  last log lines:\n" + "\n".join("    " + line for line in text.splitlines()[-30:])

    def _deliver_to_proxy(self, container: str, files: Mapping[str, bytes], *, agent_network: str,
                          reach: str | None) -> None:
        """Ship the proxy its files and wait until it serves; with `reach` (the agent's
        address), first check in the same exec that the proxy reaches the agent."""
        reach_args = ["--reach", reach, "--reach-timeout", f"{REACH_TIMEOUT:g}"] if reach else []
        result = self.docker.run(
            ["exec", "-i", container, *RECEIVE, "--dir", dp.RUN_DIR, "--timeout", str(int(READY_TIMEOUT)),
             *reach_args],
            input=_tar(files, mode=0o400, uid=10001, gid=10001),
            check=False,
            timeout=READY_TIMEOUT + REACH_TIMEOUT + 30,
        )
        if result.returncode == EXIT_UNREACHABLE:
            self._unreachable(agent_network, result.stderr.decode(errors="replace"))
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip() or result.stdout.decode(errors="replace").strip()
            raise StartError(
                f"the egress proxy {container} did not start serving: {detail}\n" + self._logs_excerpt(container)
            )

    def _check_reach(self, proxy: str, agent_ip: str, network: str) -> None:
        """That packets pass between the proxy and the agent (docs/prds/0007-podman.md: a host
        firewall may drop traffic on internal bridges, which would look like a hung agent)."""
        result = self.docker.run(
            ["exec", proxy, *RECEIVE, "--dir", dp.RUN_DIR, "--reach-only", "--reach", agent_ip,
             "--reach-timeout", f"{REACH_TIMEOUT:g}"],
            check=False,
            timeout=REACH_TIMEOUT + 30,
        )
        if result.returncode == EXIT_UNREACHABLE:
            self._unreachable(network, result.stderr.decode(errors="replace"))
        if result.returncode != 0:
            raise StartError(f"checking that the proxy reaches the agent failed: "
                             f"{result.stderr.decode(errors='replace').strip()}")

    def _unreachable(self, network: str, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1:] or ["(no output)"]
        if self.podman:
            tip = ("if Docker runs on this host too, its iptables FORWARD policy DROP also drops traffic on "
                   "Podman's bridges; allow bridged traffic on them in Docker's DOCKER-USER chain: "
                   "iptables -I DOCKER-USER -i podman+ -o podman+ -m physdev --physdev-is-bridged -j ACCEPT")
        else:
            tip = "a host firewall (e.g. firewalld) may drop traffic on Docker's internal bridges"
        raise StartError(
            f"the proxy cannot reach the agent on the network {network}: {detail[0]}",
            tip=tip,
        )

    def _capture_after(self, reach: Future, capture: dp.CaptureSpec, substitutions: Mapping[str, str],
                       created: _Created) -> None:
        # After the reach check: it waits for the agent's reset, which the capture's rules
        # let through only as the reply to a connection they saw begin.
        reach.result()
        self._install_capture(capture, substitutions, created)

    def _install_capture(self, capture: dp.CaptureSpec, substitutions: Mapping[str, str], created: _Created) -> None:
        """Runs the capture helper to its end: when this returns, the route and rules are in
        the agent's namespace and the helper (the only process that could change them) is gone."""
        helper = capture.install
        argv = [_substitute(arg, substitutions) for arg in dp.run_argv(helper, stdin=True)]
        created.add("container", helper.name)  # an interrupted run may leave it: teardown removes it then
        try:
            result = self.docker.run(argv, input=_substitute(capture.ruleset, substitutions).encode(), check=False,
                                     timeout=READY_TIMEOUT)
        except BackendError as e:
            raise StartError(f"installing the transparent capture failed: {e.message}") from None
        created.discard("container", helper.name)  # the run returned: --rm removed it
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
            raise StartError(
                f"installing the transparent capture in the agent's network namespace failed:\n  {detail}",
                tip="the helper runs the proxy image's nft and ip with NET_ADMIN; rebuild the proxy image with "
                "`bottle build --only proxy` if it lacks them, and the host kernel needs nf_tables (nft list tables)",
            )

    def _install_ca(self, container: str, cert_pem: bytes) -> None:
        result = self.docker.run(
            ["exec", "-i", "--user", "0:0", container, "sh", "-c", INSTALL_CA_SCRIPT],
            input=cert_pem,
            check=False,
        )
        if result.returncode != 0:
            raise StartError(
                f"installing the bottle CA in the agent {container} failed "
                f"(exit code {result.returncode}): {result.stderr.decode(errors='replace').strip()}",
                tip="the agent image needs a POSIX sh, sleep and the ca-certificates package",
            )

    # -- running ------------------------------------------------------------------

    @contextlib.contextmanager
    def follow_egress_log(self, running: RunningBottle, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        follower = _LogFollower(self.docker, running.proxy, path)
        self._followers[running.proxy] = follower
        follower.start()
        try:
            yield
        finally:
            self._followers.pop(running.proxy, None)
            follower.stop()
            # Write the complete log once more so nothing logged at the very end is lost.
            result = self.docker.run(["logs", running.proxy], check=False)
            if result.returncode == 0:
                path.write_bytes(result.stdout)
            if running.capture_report is not None:
                self._append_capture_drops(running, path)

    def _append_capture_drops(self, running: RunningBottle, path: Path) -> None:
        """What the transparent capture rejected, one line per destination, read from the
        agent's namespace before it goes (docs/log-format.md)."""
        try:
            result = self.docker.run(list(running.capture_report), check=False, timeout=READY_TIMEOUT)
            if result.returncode != 0:
                raise capture.ReportError(result.stderr.decode(errors="replace").strip()
                                          or f"exit code {result.returncode}")
            dropped = capture.parse_report(result.stdout.decode(errors="replace"))
        except (BackendError, capture.ReportError) as e:
            detail = e.message if isinstance(e, BackendError) else str(e)
            print(f"bottle: warning: could not read what the transparent capture rejected: {detail}", file=sys.stderr)
            return
        lines = capture.drop_lines(dropped, bottle=running.bottle_id, client=running.addresses["agent"])
        with open(path, "a", encoding="utf-8") as log:
            log.writelines(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)

    def run_agent(self, running: RunningBottle, command: Sequence[str], *, interactive: bool) -> int:
        argv = ["exec", "-i"]
        if interactive:
            argv.append("-t")
        argv += [running.agent, *command]
        process = subprocess.Popen(self.docker.argv(argv))
        try:
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
                if process.poll() is None:
                    process.kill()

    # -- a component dies mid-run ------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, running: RunningBottle, say: Callable[[str], None]) -> Iterator[None]:
        live = self._live.get(running.proxy)
        if live is None:
            yield
            return
        exit_codes = watching.ExitCodes()
        events = self._follow_deaths([running.scanner, running.proxy], exit_codes)
        watcher = watching.Watcher(
            exit_code=exit_codes.get,
            bottle_id=running.bottle_id,
            scanner=running.scanner,
            proxy=running.proxy,
            inspect=self._observe,
            restore_proxy=lambda: self._restore_proxy(running, live, say),
            scanner_back=lambda: self._scanner_back(running, live),
            say=say,
            before_poll=self._run_health_checks if self.podman else (lambda _: None),
        )
        exit_codes.on_death = watcher.wake
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            events.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                events.wait(timeout=5)
            forget_update(running.bottle_id, self.env)  # the last reload's update, kept for a restarted proxy

    def _follow_deaths(self, names: list[str], exit_codes: watching.ExitCodes) -> subprocess.Popen:
        """`events` for these containers' deaths: a container the engine restarts between two
        polls reports exit code 0 to `inspect`, its death event has the real one."""
        if self.podman:
            argv = ["events", "--filter", "event=died", "--format", "json"]
        else:
            argv = ["events", "--filter", "event=die", "--format", "{{json .}}"]
        for name in names:
            argv += ["--filter", f"container={name}"]
        process = subprocess.Popen(self.docker.argv(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        threading.Thread(target=exit_codes.feed, args=((line.decode(errors="replace") for line in process.stdout),),
                         name="bottle-events", daemon=True).start()
        return process

    def _observe(self, names: list[str]) -> dict[str, watching.Observation]:
        result = self.docker.run(["inspect", "--type", "container", "--format", watching.TEMPLATE, *names],
                                 check=False, timeout=30)
        found = watching.parse_inspect(result.stdout.decode(errors="replace"))
        if not self.podman:
            # A restarted scanner says "starting" until Docker's first check, up to
            # HEALTH_INTERVAL later: run the check now, so it is back as soon as it serves.
            for name, obs in found.items():
                if obs.running and obs.health == "starting" and self._probe_health(name):
                    found[name] = dataclasses.replace(obs, health="healthy")
        return found

    def _run_health_checks(self, last) -> None:
        # Podman runs health checks from systemd timers, which may not exist (see _wait_healthy).
        for name, obs in last:
            if obs.running and obs.health not in (None, "healthy"):
                self.docker.run(["healthcheck", "run", name], check=False, timeout=30)

    def _restore_proxy(self, running: RunningBottle, live: _Live, say: Callable[[str], None]) -> None:
        """A restarted proxy has an empty run directory: give it its CA and policy again (the
        policy of the last `bottle reload`, if any), then follow its log again."""
        agent_network = live.plan.network("agent").name
        proxy_ip = self._address(running.proxy, agent_network)
        if proxy_ip != live.proxy_ip:
            # The agent's proxy settings and DNS name the old address: there is no way to
            # point them elsewhere, so the bottle ends (fail closed) instead of hanging.
            say(f"the egress proxy of {running.bottle_id} came back with another address on the agent network "
                f"({live.proxy_ip} → {proxy_ip}), which the agent's proxy settings do not name; stopping the bottle")
            os.kill(os.getpid(), signal.SIGTERM)
            raise watching.StopBottle()
        files = self._proxy_files(live)
        self._deliver_to_proxy(running.proxy, files, agent_network=agent_network, reach=None)
        follower = self._followers.get(running.proxy)
        if follower is not None:
            follower.restart()

    def _proxy_files(self, live: _Live) -> dict[str, bytes]:
        files = {
            "mitmproxy-ca.pem": live.secrets.ca.mitmproxy_pem,
            **proxy_files(live.plan.bottle, live.secrets, agent_ip=live.agent_ip, proxy_ip=live.proxy_ip,
                          run_dir=dp.RUN_DIR, scanner_url=_scanner_url(live.scanner_host)),
        }
        update = saved_update(live.plan.bottle.bottle_id, self.env)
        if update is not None:
            files["policy.json"] = (json.dumps(merge_update(json.loads(files["policy.json"]), update), indent=2)
                                    + "\n").encode()
        return files

    def _scanner_back(self, running: RunningBottle, live: _Live) -> None:
        """Without a name server on the scanner network (Podman) the proxy reaches pipelock by
        its address, which a restart may change: tell the proxy the new one."""
        if live.plan.container("pipelock").alias:
            return
        address = self._address(running.scanner, live.plan.network("scanner").name)
        if address != live.scanner_host:
            self._send_update(running.proxy, {"scanner": {"url": _scanner_url(address)}})
            live.scanner_host = address

    # -- reload ---------------------------------------------------------------------

    def find_bottle(self, ref: str) -> tuple[str, str]:
        """(bottle id, proxy container) of the bottle `ref` names: its id or a unique start of it."""
        names = self.docker.output(["ps", "--all", "--filter", f"label={dp.MANAGED_LABEL}=true",
                                    "--filter", f"label={dp.ROLE_LABEL}=proxy", "--format", "{{.Names}}"]).split()
        ids = {name.removesuffix("-proxy"): name for name in names if name.endswith("-proxy")}
        if ref in ids:
            return ref, ids[ref]
        matches = sorted(i for i in ids if i.startswith(ref) or i.startswith(f"bottle-{ref}"))
        if not matches:
            raise LiveError(f"no bottle {ref!r} runs on this {self.engine.title} engine",
                            tip=f"`bottle logs` names past bottles; `{self.engine.name} ps --filter "
                            "label=dev.bottle.role=proxy` lists running ones")
        if len(matches) > 1:
            raise LiveError(f"{ref!r} names {len(matches)} bottles: {', '.join(matches)}; give more of the id")
        return matches[0], ids[matches[0]]

    def live_bottle(self, ref: str) -> LiveBottle:
        bottle_id, proxy = self.find_bottle(ref)
        containers = {role: f"{bottle_id}-{role}" for role in ("pipelock", "proxy", "agent")}
        result = self.docker.run(["inspect", "--type", "container", *containers.values()], check=False)
        info = {c["Name"].lstrip("/"): c for c in json.loads(result.stdout or b"[]")}
        for role, name in containers.items():
            state = (info.get(name) or {}).get("State") or {}
            if state.get("Status") != "running":
                raise LiveError(f"bottle {bottle_id} is not running: its {role} container {name} is "
                                f"{state.get('Status') or 'gone'}")
        shown = self.docker.run(["exec", proxy, *RECEIVE, "--dir", dp.RUN_DIR, "--show"], check=False, timeout=60)
        if shown.returncode != 0:
            raise LiveError(f"cannot read the policy of {bottle_id} from its proxy: "
                            f"{shown.stderr.decode(errors='replace').strip()}")
        document = json.loads(shown.stdout)
        return LiveBottle(bottle_id=bottle_id, proxy=proxy, policy=document["policy"], sha256=document["sha256"],
                          upstream_ca_sha256=document["upstream_ca_sha256"],
                          fixed=_fixed_running({role: info[name] for role, name in containers.items()}))

    def planned_fixed(self, plan: dp.DockerBottlePlan) -> dict[str, object]:
        return _fixed_planned(plan)

    def apply_update(self, live: LiveBottle, update: dict) -> dict:
        return self._send_update(live.proxy, update)

    def _send_update(self, proxy: str, update: dict) -> dict:
        result = self.docker.run(["exec", "-i", proxy, *RECEIVE, "--dir", dp.RUN_DIR, "--reload",
                                  "--timeout", str(int(READY_TIMEOUT))],
                                 input=json.dumps(update).encode(), check=False, timeout=READY_TIMEOUT + 30)
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().removeprefix("bottle: ")
            raise LiveError(f"the proxy {proxy} refused the new policy: {detail}")
        return json.loads(result.stdout)

    def policy_reload_logged(self, live: LiveBottle, sha256: str, timeout: float = 10.0) -> dict | None:
        """The proxy's `policy_reload` log line for `sha256`, once it is in the container's log."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.docker.run(["logs", "--tail", "500", live.proxy], check=False).stdout.decode(errors="replace")
            for line in reversed(out.splitlines()):
                if '"policy_reload"' in line and sha256 in line:
                    with contextlib.suppress(ValueError):
                        return json.loads(line)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    # -- cleanup ------------------------------------------------------------------

    def cleanup(self, *, remove_running: bool, dry_run: bool, echo: Callable[[str], None]) -> int:
        removed = 0
        for kind in ("container", "volume", "network"):
            for name, labels in self._managed(kind):
                bottle_id, owner = labels.get(dp.BOTTLE_LABEL, ""), labels.get(dp.OWNER_LABEL, "")
                if not remove_running and owner_alive(owner):
                    echo(f"skipping {kind} {name}: its bottle {bottle_id} is still running ({owner}); use --all")
                    continue
                echo(f"{'would remove' if dry_run else 'removing'} {kind} {name}")
                if not dry_run:
                    self._remove(kind, [name], keep=False)
                removed += 1
        if removed == 0:
            echo("nothing to clean up")
        return removed

    def _managed(self, kind: str) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of every `kind` bottle made. Names are listed and labels read
        with `inspect`, whose templates Docker and Podman share (their `ls` ones differ)."""
        listing, inspect, labels = {
            "container": (["ps", "--all", "--format", "{{.Names}}"], ["inspect", "--type", "container"],
                          "{{json .Config.Labels}}"),
            "volume": (["volume", "ls", "--format", "{{.Name}}"], ["volume", "inspect"], "{{json .Labels}}"),
            "network": (["network", "ls", "--format", "{{.Name}}"], ["network", "inspect"], "{{json .Labels}}"),
        }[kind]
        names = self.docker.output([*listing, "--filter", f"label={dp.MANAGED_LABEL}=true"]).split()
        found = []
        for name in names:
            result = self.docker.run([*inspect, "--format", labels, name], check=False)
            if result.returncode == 0:  # else removed meanwhile
                found.append((name, json.loads(result.stdout or b"null") or {}))
        return found

    # -- operating running bottles (docs/prds/0012-operating-bottles.md) ---------------

    supports_detached = True

    def components(self, bottle_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        wanted = set(bottle_ids)
        found: dict[str, dict[str, str]] = {b: {} for b in wanted}
        ids = self.docker.output(["ps", "--all", "--quiet", "--filter", f"label={dp.MANAGED_LABEL}=true"]).split()
        if not ids:
            return found
        # One inspect for all: labels say whose and which; health where the container has a check.
        fmt = ("{{.Name}}\t{{json .Config.Labels}}\t{{.State.Status}}\t"
               "{{if .State.Health}}{{.State.Health.Status}}{{end}}")
        result = self.docker.run(["inspect", "--type", "container", "--format", fmt, *ids], check=False)
        for line in result.stdout.decode(errors="replace").splitlines():
            name, _, rest = line.partition("\t")
            name = name.strip().lstrip("/")  # Docker's .Name starts with a slash
            labels_json, _, rest = rest.partition("\t")
            status, _, health = rest.partition("\t")
            try:
                labels = json.loads(labels_json) or {}
            except ValueError:
                continue
            bottle_id, role = labels.get(dp.BOTTLE_LABEL), labels.get(dp.ROLE_LABEL)
            if bottle_id in wanted and role in ("agent", "proxy", "pipelock"):
                # A stopped container keeps its last health: its status says more then.
                status, health = status.strip(), health.strip()
                if status == "running" and health == "starting" and not self.podman and self._probe_health(name):
                    health = "healthy"  # Docker's first check is still due (see _observe)
                found[bottle_id][role] = health if status == "running" and health else status
        return found

    def exec_argv(self, bottle_id: str, command: Sequence[str], *, stdin: bool, tty: bool) -> list[str]:
        ids = self.docker.output(["ps", "--all", "--quiet", "--filter", f"label={dp.BOTTLE_LABEL}={bottle_id}",
                                  "--filter", f"label={dp.ROLE_LABEL}=agent"]).split()
        if not ids:
            raise BackendError(f"the agent container of {bottle_id} is gone",
                               tip=f"`bottle ps -a` shows what became of it; `bottle stop {bottle_id}` removes the rest")
        user, _, status = self.docker.output(
            ["inspect", "--type", "container", "--format", "{{.Config.User}} {{.State.Status}}", ids[0]]).partition(" ")
        if status != "running":
            raise BackendError(f"the agent container of {bottle_id} is {status or 'not running'}")
        if not user:  # every agent is created with --user; without one exec would run as root
            raise BackendError(f"the agent container of {bottle_id} names no user; refusing to exec as root")
        # `exec` passes no variable of this process: the command gets the container's own
        # environment (proxy variables, CA bundle, placeholders), as the agent's user.
        return self.docker.argv(["exec", *(["-i"] if stdin else []), *(["-t"] if tty else []),
                                 "--user", user, ids[0], *command])

    def remove_bottle(self, bottle_id: str, *, echo: Callable[[str], None]) -> int:
        label = f"label={dp.BOTTLE_LABEL}={bottle_id}"
        removed = 0
        for kind, listing in (("container", ["ps", "--all", "--format", "{{.Names}}"]),
                              ("volume", ["volume", "ls", "--format", "{{.Name}}"]),
                              ("network", ["network", "ls", "--format", "{{.Name}}"])):
            names = self.docker.output([*listing, "--filter", label]).split()
            for name in names:
                echo(f"removing {kind} {name}")
            if names:
                self._remove(kind, names, keep=False)
            removed += len(names)
        return removed


def health_test_argv(test: Sequence[str]) -> list[str]:
    """The command of a HEALTHCHECK test as `exec` runs it: ["CMD", argv…] or
    ["CMD-SHELL", script]; [] for none ("NONE", or no check)."""
    if test and test[0] == "CMD":
        return list(test[1:])
    if test and test[0] == "CMD-SHELL" and len(test) > 1:
        return ["/bin/sh", "-c", test[1]]
    return []


def _unix_time(started_at: str) -> str:
    """`logs --since` as both engines take it (seconds.nanoseconds), from `.State.StartedAt`:
    RFC 3339 on Docker, Go's default time format on Podman (`2006-01-02 15:04:05.999 +0000 UTC`)."""
    import datetime
    import re

    match = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?", started_at.strip())
    if not match:
        raise BackendError(f"cannot read the start time {started_at!r}")
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    if ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    seconds = datetime.datetime.fromisoformat(f"{day}T{clock}{zone}").timestamp()
    return f"{int(seconds)}.{(fraction or '0')[:9].ljust(9, '0')}"


def _scanner_url(host: str) -> str:
    return f"http://{host}:{SCANNER_PORT}/api/v1/scan"


def _image(name: str) -> str:
    """An image name as either engine reports it (Podman qualifies local and Hub names)."""
    for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
        name = name.removeprefix(prefix)
    return name


_ROLE_TITLES = {"pipelock": "scanner", "proxy": "proxy", "agent": "agent"}


def _fixed_planned(plan: dp.DockerBottlePlan) -> dict[str, object]:
    """What a plan fixes at create, in the terms `_fixed_running` reads back."""
    fixed: dict[str, object] = {}
    for c in plan.containers:
        title = _ROLE_TITLES[c.role]
        fixed[f"{title} image"] = _image(c.image)
        fixed[f"{title} networks"] = sorted([c.network, *(n for n, _ in c.extra_networks)])
    agent = plan.container("agent")
    fixed["agent.user"] = agent.user
    fixed["agent.workdir"] = agent.workdir
    fixed["agent.workspace"] = sorted(f"{m.source}:{m.target}" for m in agent.mounts if m.type == "bind")
    fixed["agent.resources"] = {"cpus": agent.cpus, "memory": plan.bottle.agent.resources.memory_bytes,
                                "pids": agent.pids}
    fixed["agent.env"] = dict(plan.bottle.agent.env)
    return fixed


def _fixed_running(info: Mapping[str, dict]) -> dict[str, object]:
    """`_fixed_planned`'s keys, from `inspect` of each role's container."""
    fixed: dict[str, object] = {}
    for role, c in info.items():
        title = _ROLE_TITLES[role]
        fixed[f"{title} image"] = _image(c["Config"]["Image"])
        fixed[f"{title} networks"] = sorted((c.get("NetworkSettings") or {}).get("Networks") or {})
    agent = info["agent"]
    host = agent.get("HostConfig") or {}
    fixed["agent.user"] = agent["Config"].get("User")
    fixed["agent.workdir"] = agent["Config"].get("WorkingDir")
    fixed["agent.workspace"] = sorted(f"{m['Source']}:{m['Destination']}" for m in agent.get("Mounts") or []
                                      if m.get("Type") == "bind")
    nano = host.get("NanoCpus") or 0
    if not nano and host.get("CpuQuota") and host.get("CpuPeriod"):
        nano = host["CpuQuota"] * 1_000_000_000 // host["CpuPeriod"]
    fixed["agent.resources"] = {"cpus": nano / 1e9 if nano else None, "memory": host.get("Memory") or None,
                                "pids": host.get("PidsLimit") or None}
    env = dict(item.split("=", 1) for item in agent["Config"].get("Env") or [] if "=" in item)
    fixed["agent.env"] = env
    return fixed


def _substitute(value: str, substitutions: Mapping[str, str]) -> str:
    for marker, replacement in substitutions.items():
        value = value.replace(marker, replacement)
    return value


@dataclasses.dataclass(kw_only=True)
class _Live:
    """What a running bottle's watcher needs to give a restarted proxy its files again."""

    plan: dp.DockerBottlePlan
    secrets: LaunchSecrets
    agent_ip: str
    proxy_ip: str
    scanner: str
    scanner_host: str  # the name or address the proxy reaches pipelock by


class _LogFollower:
    """`logs --follow` of the proxy into the egress log. It ends when the container stops;
    `restart()` follows a restarted proxy from its new start on, appending."""

    def __init__(self, docker: DockerCLI, container: str, path: Path) -> None:
        self.docker = docker
        self.container = container
        self.path = path
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def start(self, since: str | None = None) -> None:
        with open(self.path, "ab" if since else "wb") as sink:
            self.process = subprocess.Popen(
                self.docker.argv(["logs", "--follow", *(["--since", since] if since else []), self.container]),
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.DEVNULL,
            )

    def restart(self) -> None:
        with self.lock:
            self._end()
            started = self.docker.output(["inspect", "--type", "container", "--format", "{{.State.StartedAt}}",
                                          self.container])
            self.start(since=_unix_time(started))

    def stop(self) -> None:
        with self.lock:
            self._end()

    def _end(self) -> None:
        follower, self.process = self.process, None
        if follower is None:
            return
        follower.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            follower.wait(timeout=5)
        if follower.poll() is None:
            follower.kill()


class _Created:
    """What a launch has made so far, by kind, in creation order (thread-safe appends)."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"container": [], "volume": [], "network": []}
        self.stopping = threading.Event()

    def add(self, kind: str, name: str) -> None:
        self.names[kind].append(name)

    def discard(self, kind: str, name: str) -> None:
        if name in self.names[kind]:
            self.names[kind].remove(name)


class _Workers:
    """A thread pool whose exit waits for every task and re-raises the first failure,
    so nothing is still being created when teardown starts. If the block fails, `stop`
    is set before waiting, so long waits in the tasks end early."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._stop = stop

    def __enter__(self) -> _Workers:
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bottle-start")
        self._futures: list[Future] = []
        return self

    def submit(self, fn, *args) -> Future:
        future = self._pool.submit(fn, *args)
        self._futures.append(future)
        return future

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._stop is not None:
            self._stop.set()
        self._pool.shutdown(wait=True)
        if exc is None:
            for future in self._futures:
                future.result()


def _line_for(text: str, name: str) -> str:
    return next((line for line in text.splitlines() if name in line), "")


def _gone(line: str) -> bool:
    line = line.lower()
    return "no such" in line or "not found" in line
