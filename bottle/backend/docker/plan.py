"""The Docker plan: exactly which networks, volumes and containers a bottle is made of.

`docker_plan(plan, engine)` is pure. `create_argv()` turns a container spec into the
`docker create` arguments (`network_create_argv()` likewise for a network); the launcher
runs those very arguments and the dry-run prints them, so what the dry-run shows is what
`bottle start` creates. Values only known at launch (the proxy's address, the
placeholders) appear as `<...>` markers that the launcher substitutes.

The engine is Docker or Podman. Both take these commands, but each expresses the
isolation with its own options (docs/prds/0007-podman.md); `ENGINE_OPTIONS` holds the
difference, so every other line of the plan is the same for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bottle import __version__
from bottle.backend.base import (  # noqa: F401 (the Docker backend reads these here)
    BOTTLE_LABEL,
    MANAGED_LABEL,
    OWNER,
    OWNER_LABEL,
    PROXY_IP,
    ROLE_LABEL,
    VERSION_LABEL,
    agent_environment,
    bottle_labels,
    placeholder_marker,
)
from bottle.launch import capture
from bottle.mitm.policy import CapturedPort, to_document
from bottle.plan import CAPTURE_DNS_ADDRESS, DNS_PORT, PROXY_PORT, BottlePlan, bottle_document

PROXY_UID = "10001:10001"
PIPELOCK_UID = "65534:65534"
RUN_DIR = "/run/bottle"
HEALTH_INTERVAL = "5s"  # the engine's own check of the scanner, while the bottle runs
PIPELOCK_CONFIG_DIR = "/etc/pipelock"
PIPELOCK_CONFIG_FILE = f"{PIPELOCK_CONFIG_DIR}/pipelock.yaml"
PIPELOCK_ALIAS = "pipelock"
PROXY_ALIAS = "proxy"
PIPELOCK_MAIN_LISTEN = "127.0.0.1:8888"
# The scanner and the proxy come back by the engine's own restart policy when their process
# dies (docs/prds/0013-live-policy-and-component-health.md); `bottle start` notices it, keeps
# saying egress is blocked until they serve again, and re-delivers the proxy's policy. Not
# `always`/`unless-stopped`: on Docker those also bring a dead bottle's containers back when
# the daemon restarts. A user's `stop` or teardown's `rm --force` restarts nothing (both engines).
RESTART_POLICY = "on-failure"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """A network. `internal` networks have no route out and no gateway address; `dns`
    False means the engine runs no name server on it (Podman: `--disable-dns`)."""

    role: str
    name: str
    internal: bool
    create: bool
    options: tuple[tuple[str, str], ...] = ()
    dns: bool = True
    labels: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class VolumeSpec:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mount:
    type: str  # bind | volume | tmpfs
    target: str
    source: str | None = None
    read_only: bool = False
    options: tuple[tuple[str, str], ...] = ()

    def argv(self) -> list[str]:
        if self.type == "tmpfs":
            opts = ",".join(k if v == "" else f"{k}={v}" for k, v in self.options)
            return ["--tmpfs", f"{self.target}:{opts}" if opts else self.target]
        value = f"type={self.type},source={self.source},target={self.target}"
        if self.read_only:
            value += ",readonly"
        return ["--mount", value]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvVar:
    """`value=None` means the value is passed from bottle's own environment by name
    (`docker create -e NAME`), so a secret never appears in an argv or a plan."""

    name: str
    value: str | None

    def shown(self) -> str:
        return self.value if self.value is not None else "<from bottle's environment>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """One container of the bottle, with every hardening flag explicit."""

    role: str
    name: str
    image: str
    network: str
    extra_networks: tuple[tuple[str, str | None], ...]
    alias: str | None
    user: str
    env: tuple[EnvVar, ...]
    mounts: tuple[Mount, ...]
    command: tuple[str, ...]
    entrypoint: str | None = None
    workdir: str | None = None
    read_only: bool = False
    # Podman mounts tmpfs on /tmp, /var/tmp and /run of a read-only container unless told
    # not to; False asks for Docker's behaviour (nothing writable but the mounts planned).
    read_only_tmpfs: bool | None = None
    init: bool = False
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ("no-new-privileges",)
    sysctls: tuple[tuple[str, str], ...] = ()
    dns: tuple[str, ...] = ()
    cpus: float | None = None
    memory: str | None = None
    pids: int | None = None
    health: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    restart: str | None = None  # the engine's restart policy; None: never restarted


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """Transparent capture (docs/prds/0009-transparent-capture.md): `install` runs once, after
    the agent container starts and before its command, in the agent's network namespace
    with NET_ADMIN only, and is gone when it returns; `ruleset` is its standard input.
    `report` runs the same way at teardown and lists what the capture rejected."""

    ports: tuple[CapturedPort, ...]
    dns_address: str
    install: ContainerSpec
    ruleset: str
    report: ContainerSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class DockerBottlePlan:
    """A BottlePlan made concrete for Docker: resources in start order, and the teardown list."""

    bottle: BottlePlan
    networks: tuple[NetworkSpec, ...]
    volumes: tuple[VolumeSpec, ...]
    containers: tuple[ContainerSpec, ...]
    engine: str = "docker"
    capture: CaptureSpec | None = None  # None: proxy capture, nothing is installed
    # How the engine was chosen when that was a guess (dry-run text only).
    engine_note: str | None = dataclasses.field(default=None, compare=False)

    def container(self, role: str) -> ContainerSpec:
        return next(c for c in self.containers if c.role == role)

    def network(self, role: str) -> NetworkSpec:
        return next(n for n in self.networks if n.role == role)

    @property
    def start_order(self) -> tuple[str, ...]:
        return tuple(c.role for c in self.containers)

    def to_dict(self) -> dict:
        """The `bottle start --dry-run --format=json` document (see docs/dry-run-json.md)."""
        return plan_document(self)

    def render_text(self) -> str:
        """What `bottle start --dry-run` prints."""
        from bottle.backend.docker.preflight import render_preflight

        return render_preflight(self, note=self.engine_note)

    @property
    def teardown(self) -> tuple[tuple[str, str], ...]:
        """What teardown removes, in order: containers (last started first), volumes, networks."""
        return (
            *(("container", c.name) for c in reversed(self.containers)),
            *(("volume", v.name) for v in self.volumes),
            *(("network", n.name) for n in reversed(self.networks) if n.create),
        )


def docker_memory(value: str | int) -> str:
    """The manifest's size as `docker create --memory` takes it."""
    return str(value) if isinstance(value, int) else value.lower()


def labels_for(plan: BottlePlan, role: str) -> tuple[tuple[str, str], ...]:
    return (*bottle_labels(plan, role), (OWNER_LABEL, OWNER), (VERSION_LABEL, __version__))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _EngineOptions:
    """What differs between engines: how each gives the agent and scanner networks no
    route out, no address on the host, no IPv6 and no name server but the proxy
    (docs/prds/0003, 0007), and how each takes a read-only root and a tmpfs."""

    network_options: tuple[tuple[str, str], ...]
    network_dns: bool
    # Sysctls for the containers on an internal network (agent, pipelock).
    no_ipv6: tuple[tuple[str, str], ...]
    read_only_tmpfs: bool | None
    run_dir_options: tuple[tuple[str, str], ...]
    tmp_options: tuple[tuple[str, str], ...]
    # The agent's HOME for a user the image has none for; owned by `user` (uid:gid).
    home_options: Callable[[str], tuple[tuple[str, str], ...]]


_TMPFS = (("rw", ""), ("noexec", ""), ("nosuid", ""), ("size", "64m"))
# Memory-backed, so it counts against the agent's memory limit: room for the agent's
# settings and caches, not for a whole package cache.
_HOME = (("rw", ""), ("nosuid", ""), ("size", "1g"), ("mode", "0700"))
ENGINE_OPTIONS = {
    # Docker: an internal bridge without an address on the host (inhibit_ipv4); Docker
    # itself turns IPv6 off in a container whose networks have none, and its embedded
    # resolver answers container names only.
    "docker": _EngineOptions(
        network_options=(("com.docker.network.bridge.inhibit_ipv4", "true"),),
        network_dns=True,
        no_ipv6=(),
        read_only_tmpfs=None,
        run_dir_options=(*_TMPFS, ("uid", "10001"), ("gid", "10001"), ("mode", "0700")),
        tmp_options=_TMPFS,
        home_options=lambda user: (*_HOME, ("uid", user.split(":")[0]), ("gid", user.split(":")[1])),
    ),
    # Podman (netavark): an internal network gets a gateway address on the host bridge
    # only to serve aardvark-dns, so without DNS the bridge has no IPv4 address at all.
    # Its containers keep IPv6 link-local addresses, and the host bridge has one too, so
    # the host would be reachable over IPv6: turn IPv6 off in those containers (`default`
    # too, for interfaces connected later). tmpfs takes `U` (owned by the container's
    # user) instead of uid=/gid=, and `notmpcopyup` keeps it empty as on Docker.
    "podman": _EngineOptions(
        network_options=(),
        network_dns=False,
        no_ipv6=(("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")),
        read_only_tmpfs=False,
        run_dir_options=(*_TMPFS, ("mode", "0700"), ("notmpcopyup", ""), ("U", "")),
        tmp_options=(*_TMPFS, ("notmpcopyup", "")),
        home_options=lambda user: (*_HOME, ("notmpcopyup", ""), ("U", "")),
    ),
}


def docker_plan(plan: BottlePlan, engine: str = "docker", *, engine_note: str | None = None) -> DockerBottlePlan:
    bid = plan.bottle_id
    opts = ENGINE_OPTIONS[engine]
    # Without a name server on the internal networks, nothing is found by alias there:
    # the proxy reaches pipelock by its address (the launcher looks it up).
    aliases = opts.network_dns
    agent_net = NetworkSpec(role="agent", name=f"{bid}-agent", internal=True, create=True,
                            options=opts.network_options, dns=opts.network_dns,
                            labels=labels_for(plan, "network-agent"))
    scanner_net = NetworkSpec(role="scanner", name=f"{bid}-scanner", internal=True, create=True,
                              options=opts.network_options, dns=opts.network_dns,
                              labels=labels_for(plan, "network-scanner"))
    if plan.docker.egress_network:
        egress_net = NetworkSpec(role="egress", name=plan.docker.egress_network, internal=False, create=False)
    else:
        egress_net = NetworkSpec(role="egress", name=f"{bid}-egress", internal=False, create=True,
                                 labels=labels_for(plan, "network-egress"))
    config_volume = VolumeSpec(name=f"{bid}-pipelock-config", labels=labels_for(plan, "volume-pipelock-config"))

    pipelock = ContainerSpec(
        role="pipelock",
        name=f"{bid}-pipelock",
        image=plan.scanner.image,
        network=scanner_net.name,
        extra_networks=(),
        alias=PIPELOCK_ALIAS if aliases else None,
        user=PIPELOCK_UID,
        env=(),
        # `docker cp` cannot write into a read-only mount, so the volume is mounted
        # read-write; its files are root-owned 0444 and pipelock runs as nobody.
        mounts=(Mount(type="volume", source=config_volume.name, target=PIPELOCK_CONFIG_DIR),),
        command=("run", "--config", PIPELOCK_CONFIG_FILE),
        read_only=True,
        read_only_tmpfs=opts.read_only_tmpfs,
        sysctls=opts.no_ipv6,
        cpus=1.0,
        memory="512m",
        pids=256,
        # The image's HEALTHCHECK probes the loopback main listener. Start and the watcher run
        # it themselves when they need an answer now (backend.py _probe_health); Docker's own
        # runs every HEALTH_INTERVAL (every 500 ms cost an idle bottle 11 % of a core).
        health=(("interval", HEALTH_INTERVAL), ("timeout", "3s"), ("retries", "3"), ("start-period", "0s")),
        labels=labels_for(plan, "pipelock"),
        restart=RESTART_POLICY,
    )
    proxy = ContainerSpec(
        role="proxy",
        name=f"{bid}-proxy",
        image=plan.proxy_image,
        network=egress_net.name,
        extra_networks=((agent_net.name, PROXY_ALIAS if aliases else None), (scanner_net.name, None)),
        alias=None,
        user=PROXY_UID,
        # Real credentials live only here, passed by name from bottle's environment.
        env=tuple(EnvVar(name=ref, value=None) for ref in plan.egress.token_refs),
        mounts=(
            Mount(type="tmpfs", target=RUN_DIR, options=opts.run_dir_options),
            Mount(type="tmpfs", target="/tmp", options=opts.tmp_options),
        ),
        command=(),
        read_only=True,
        read_only_tmpfs=opts.read_only_tmpfs,
        # A dual-homed proxy must never route packets between its networks, and it binds
        # the DNS responder on port 53 without any capability.
        sysctls=(
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv6.conf.all.forwarding", "0"),
            ("net.ipv4.ip_unprivileged_port_start", "53"),
        ),
        cpus=2.0,
        memory="1g",
        pids=512,
        labels=labels_for(plan, "proxy"),
        restart=RESTART_POLICY,
    )
    agent = plan.agent
    agent_env = [EnvVar(name=name, value=value) for name, value in agent_environment(plan)]
    mounts = []
    if agent.workspace:
        mounts.append(Mount(type="bind", source=agent.workspace, target=agent.workdir,
                            read_only=agent.workspace_read_only))
    if agent.home:
        mounts.append(Mount(type="tmpfs", target=agent.home, options=opts.home_options(agent.user)))
    agent_container = ContainerSpec(
        role="agent",
        name=f"{bid}-agent",
        image=agent.image,
        network=agent_net.name,
        extra_networks=(),
        alias=None,
        user=agent.user,
        env=tuple(agent_env),
        mounts=tuple(mounts),
        # The container idles until the CA is installed; the agent command then runs
        # through `docker exec` so its exit code and terminal are the user's.
        entrypoint="sleep",
        command=("infinity",),
        workdir=agent.workdir,
        init=True,
        sysctls=opts.no_ipv6,
        dns=(PROXY_IP,),
        cpus=agent.resources.cpus,
        memory=docker_memory(agent.resources.memory),
        pids=agent.resources.pids,
        labels=labels_for(plan, "agent"),
    )
    return DockerBottlePlan(
        bottle=plan,
        networks=(agent_net, scanner_net, egress_net),
        volumes=(config_volume,),
        containers=(pipelock, proxy, agent_container),
        engine=engine,
        engine_note=engine_note,
        capture=_capture(plan, agent_container, opts) if plan.egress.capture == "transparent" else None,
    )


def _capture(plan: BottlePlan, agent: ContainerSpec, opts: _EngineOptions) -> CaptureSpec:
    ports = plan.egress.captured_ports

    def helper(role: str, entrypoint: str, command: tuple[str, ...]) -> ContainerSpec:
        # The proxy image has nft and ip. Root, because the kernel checks NET_ADMIN of the
        # process; every other capability is dropped, and it shares only the agent's network.
        return ContainerSpec(
            role=role, name=f"{plan.bottle_id}-{role}", image=plan.proxy_image, network=f"container:{agent.name}",
            extra_networks=(), alias=None, user="0:0", env=(), mounts=(), entrypoint=entrypoint, command=command,
            read_only=True, read_only_tmpfs=opts.read_only_tmpfs, cap_add=("NET_ADMIN",), memory="64m", pids=16,
            labels=labels_for(plan, role),
        )

    report = capture.report_argv()
    return CaptureSpec(
        ports=ports,
        dns_address=CAPTURE_DNS_ADDRESS,
        install=helper("capture", "sh", ("-c", capture.install_script(PROXY_IP))),
        ruleset=capture.ruleset(ports, proxy_ip=PROXY_IP, proxy_port=PROXY_PORT, dns_port=DNS_PORT),
        report=helper("capture-report", report[0], tuple(report[1:])),
    )


def network_create_argv(network: NetworkSpec) -> list[str]:
    argv = ["network", "create", "--driver", "bridge"]
    if network.internal:
        argv.append("--internal")
    if not network.dns:
        argv.append("--disable-dns")
    for key, value in network.options:
        argv += ["--opt", f"{key}={value}"]
    for key, value in network.labels:
        argv += ["--label", f"{key}={value}"]
    return [*argv, network.name]


def volume_create_argv(volume: VolumeSpec) -> list[str]:
    argv = ["volume", "create"]
    for key, value in volume.labels:
        argv += ["--label", f"{key}={value}"]
    return [*argv, volume.name]


def create_argv(container: ContainerSpec) -> list[str]:
    argv = ["create", "--name", container.name, "--network", container.network]
    if container.alias:
        argv += ["--network-alias", container.alias]
    argv += ["--user", container.user]
    for cap in container.cap_drop:
        argv += ["--cap-drop", cap]
    for cap in container.cap_add:
        argv += ["--cap-add", cap]
    for opt in container.security_opt:
        argv += ["--security-opt", opt]
    if container.restart:
        argv += ["--restart", container.restart]
    if container.read_only:
        argv.append("--read-only")
    if container.read_only_tmpfs is not None:
        argv.append(f"--read-only-tmpfs={str(container.read_only_tmpfs).lower()}")
    if container.init:
        argv.append("--init")
    for key, value in container.sysctls:
        argv += ["--sysctl", f"{key}={value}"]
    for server in container.dns:
        argv += ["--dns", server]
    if container.cpus is not None:
        argv += ["--cpus", f"{container.cpus:g}"]
    if container.memory is not None:
        argv += ["--memory", container.memory, "--memory-swap", container.memory]
    if container.pids is not None:
        argv += ["--pids-limit", str(container.pids)]
    for key, value in container.health:
        argv.append(f"--health-{key}={value}")
    for mount in container.mounts:
        argv += mount.argv()
    for var in container.env:
        argv += ["--env", var.name if var.value is None else f"{var.name}={var.value}"]
    for key, value in container.labels:
        argv += ["--label", f"{key}={value}"]
    if container.workdir:
        argv += ["--workdir", container.workdir]
    if container.entrypoint:
        argv += ["--entrypoint", container.entrypoint]
    return [*argv, container.image, *container.command]


def run_argv(container: ContainerSpec, *, stdin: bool = False) -> list[str]:
    """A short-lived helper: created, attached (`stdin`: its standard input too), and removed
    when it exits."""
    return ["run", "--rm", *(["-i"] if stdin else []), *create_argv(container)[1:]]


def connect_argv(container: ContainerSpec) -> list[list[str]]:
    out = []
    for network, alias in container.extra_networks:
        argv = ["network", "connect"]
        if alias:
            argv += ["--alias", alias]
        out.append([*argv, network, container.name])
    return out


def document_head(dplan: DockerBottlePlan) -> dict:
    """The shared head (bottle.plan.bottle_document) with what the Docker backend adds or
    says in its own terms: the engine, and how the agent's DNS behaves."""
    head = bottle_document(dplan.bottle, backend="docker", memory=docker_memory(dplan.bottle.agent.resources.memory))
    head["bottle"]["engine"] = dplan.engine
    head["egress"]["dns"] = dns_behaviour(dplan)
    return head


def dns_behaviour(dplan: DockerBottlePlan) -> str:
    if dplan.capture is None:
        return "every lookup from the agent is answered NXDOMAIN by the proxy"
    return (f"the proxy answers names the policy allows with {dplan.capture.dns_address} (A records only) and every "
            "other name NXDOMAIN; lookups sent to any other server are answered the same way")


def capture_document(dplan: DockerBottlePlan) -> dict:
    """`capture` of the dry-run JSON: what transparent capture installs, as exact commands."""
    spec = dplan.capture
    if spec is None:
        return {"mode": "proxy", "ports": [], "dns_address": None, "install": None, "report": None}

    def helper(container: ContainerSpec, *, stdin: str | None) -> dict:
        return {"name": container.name, "image": container.image, "network": container.network,
                "user": container.user, "cap_drop": list(container.cap_drop), "cap_add": list(container.cap_add),
                "run_argv": [dplan.engine, *run_argv(container, stdin=stdin is not None)], "stdin": stdin}

    return {
        "mode": "transparent",
        "ports": to_document(spec.ports),
        "dns_address": spec.dns_address,
        "install": helper(spec.install, stdin=spec.ruleset),
        "report": helper(spec.report, stdin=None),
    }


def plan_document(dplan: DockerBottlePlan) -> dict:
    """The versioned dry-run JSON contract (docs/dry-run-json.md): the bottle, then the
    networks, volumes and containers Docker is asked for."""
    plan = dplan.bottle
    return {
        **document_head(dplan),
        "networks": [
            {
                "role": n.role,
                "name": n.name,
                "internal": n.internal,
                "created": n.create,
                "options": dict(n.options),
                "dns": n.dns,
                "labels": dict(n.labels),
                "create_argv": [dplan.engine, *network_create_argv(n)] if n.create else None,
            }
            for n in dplan.networks
        ],
        "volumes": [{"name": v.name, "labels": dict(v.labels)} for v in dplan.volumes],
        "containers": [
            {
                "role": c.role,
                "name": c.name,
                "image": c.image,
                "networks": [c.network, *(n for n, _ in c.extra_networks)],
                "user": c.user,
                "read_only": c.read_only,
                "cap_drop": list(c.cap_drop),
                "security_opt": list(c.security_opt),
                "sysctls": dict(c.sysctls),
                "dns": list(c.dns),
                "resources": {"cpus": c.cpus, "memory": c.memory, "pids": c.pids},
                "restart": c.restart or "no",
                "mounts": [
                    {"type": m.type, "source": m.source, "target": m.target, "read_only": m.read_only}
                    for m in c.mounts
                ],
                "env": {v.name: v.shown() for v in c.env},
                "labels": dict(c.labels),
                "create_argv": [dplan.engine, *create_argv(c)],
                "connect_argv": [[dplan.engine, *argv] for argv in connect_argv(c)],
            }
            for c in dplan.containers
        ],
        "capture": capture_document(dplan),
        "start_order": list(dplan.start_order),
        "teardown": [{"kind": kind, "name": name} for kind, name in dplan.teardown],
    }
