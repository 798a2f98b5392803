"""The Docker/Podman checks of `bottle doctor`, each with the fix for what it finds.

They reuse what `bottle start` and `bottle build` do: the engine is found and judged by
engine.py, BuildKit by build.py, and the IPv6 probe creates (and removes at once) a network
made exactly as the plan makes a bottle's agent network. Nothing here raises: every
failure becomes a finding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bottle.backend.base import owner_label
from bottle.backend.docker import plan as dp
from bottle.backend.docker.backend import MISSING_IMAGE
from bottle.backend.docker.build import PIPELOCK_IMAGE, buildkit_command
from bottle.backend.docker.cli import DockerCLI
from bottle.backend.docker.engine import (
    Engine,
    client_for,
    detect_engine,
    engine_info,
    require_supported,
    requested_engine,
)
from bottle.doctor import FAIL, OK, SKIP, WARN, Check, Report, split_tip
from bottle.errors import BottleError
from bottle.manifest import DEFAULT_AGENT_IMAGE, parse_manifest
from bottle.plan import build_plan, new_run_id, proxy_image

GIB = 1 << 30
DISK_FAIL_BELOW = 1 * GIB
DISK_WARN_BELOW = 5 * GIB

TITLES = {
    "engine": "engine",
    "buildkit": "BuildKit",
    "image-proxy": "proxy image",
    "image-agent": "agent image",
    "image-scanner": "scanner image",
    "ipv6": "no IPv6",
    "cgroups": "limits",
    "disk": "free disk",
}


def _check(check_id: str, status: str, finding: str, fix: str | None = None) -> Check:
    return Check(id=check_id, title=TITLES[check_id], status=status, finding=finding, fix=fix)


def _skipped(ids: list[str], why: str) -> list[Check]:
    return [_check(i, SKIP, why) for i in ids]


def _guarded(check_id: str, run: Callable[[], Check]) -> Check:
    # A doctor always finishes its report: whatever a check trips over is its finding.
    try:
        return run()
    except BottleError as e:
        finding, tip = split_tip(e.message)
        return _check(check_id, FAIL, finding, tip)
    except Exception as e:  # noqa: BLE001
        return _check(check_id, FAIL, f"the check itself failed: {type(e).__name__}: {e}")


def diagnose_engine(option: str | None, env: Mapping[str, str]) -> Report:
    engine_ids = ["image-proxy", "image-agent", "image-scanner", "ipv6", "cgroups", "disk"]
    try:
        requested = requested_engine(option, env)
        docker = client_for(requested, env)
    except BottleError as e:
        finding, tip = split_tip(e.message)
        return Report(engine=None, client=None, checks=(
            _check("engine", FAIL, finding, tip),
            *_skipped(["buildkit", *engine_ids], "not checked: there is no engine client to ask"),
        ))
    engine_check, engine = _engine(docker, requested, env)
    checks = [engine_check, _guarded("buildkit", lambda: _buildkit(docker, engine))]
    if engine is None:
        checks += _skipped(engine_ids, "not checked: no engine answers")
        return Report(engine=None, client=docker.executable, checks=tuple(checks))
    command = os.path.basename(docker.executable)
    for check_id, role, image, fix in (
        ("image-proxy", "proxy", proxy_image(env), _build_fix("proxy", env)),
        ("image-agent", "agent", DEFAULT_AGENT_IMAGE, "bottle build --only agent"),
        ("image-scanner", "scanner", PIPELOCK_IMAGE,
         f"{command} pull {PIPELOCK_IMAGE}, or where the registry cannot be reached: "
         "bottle build --only pipelock --pipelock-source ARCHIVE_OR_DIR"),
    ):
        checks.append(_guarded(check_id, lambda: _image(docker, check_id, role, image, fix)))
    checks.append(_guarded("ipv6", lambda: _ipv6(docker, engine)))
    info: dict[str, Any] = {}
    try:
        info = engine_info(docker)
    except BottleError as e:
        finding, tip = split_tip(e.message)
        checks += [_check("cgroups", FAIL, finding, tip), _check("disk", FAIL, finding, tip)]
        return Report(engine=str(engine), client=docker.executable, checks=tuple(checks))
    checks.append(_guarded("cgroups", lambda: _cgroups(engine, info)))
    checks.append(_guarded("disk", lambda: _disk(engine, info, env)))
    return Report(engine=str(engine), client=docker.executable, checks=tuple(checks))


def _build_fix(only: str, env: Mapping[str, str]) -> str:
    custom = env.get("BOTTLE_PROXY_IMAGE")
    prefix = f"BOTTLE_PROXY_IMAGE={custom} " if custom else ""
    return f"{prefix}bottle build --only {only}"


# -- the engine --------------------------------------------------------------------------


def _engine(docker: DockerCLI, requested: str | None, env: Mapping[str, str]) -> tuple[Check, Engine | None]:
    try:
        found = detect_engine(docker)
    except BottleError as e:
        finding, tip = split_tip(e.message)
        return _check("engine", FAIL, finding, _unreachable_fix(finding, docker, env) or tip), None
    if requested and found.name != requested:
        return _check("engine", FAIL, f"{docker.executable} drives {found}, but the engine asked for is {requested}",
                      f"unset BOTTLE_DOCKER, or point it at a {requested} client"), None
    try:
        require_supported(found)
    except BottleError as e:
        finding, tip = split_tip(e.message)
        return _check("engine", FAIL, finding, tip), None
    return _check("engine", OK, f"{found} answers {docker.executable}; bottle supports it"), found


def _unreachable_fix(finding: str, docker: DockerCLI, env: Mapping[str, str]) -> str | None:
    text = finding.lower()
    name = "podman" if "podman" in os.path.basename(docker.executable) else "docker"
    if "permission denied" in text:
        return (f"let your user use the engine's socket (sudo usermod -aG {name} $USER, then log in again), "
                "or run bottle with sudo")
    if "cannot connect" in text or "is the docker daemon running" in text or "no such file" in text:
        where = env.get("CONTAINER_HOST" if name == "podman" else "DOCKER_HOST")
        hint = f"; the client looks at {where}" if where else ""
        return f"start the engine (e.g. sudo systemctl start {name}), or point the client at one that runs{hint}"
    return None


def _buildkit(docker: DockerCLI, engine: Engine | None) -> Check:
    if engine is not None and engine.name == "podman":
        return _check("buildkit", OK, "podman build (Buildah) builds bottle's images; no BuildKit needed")
    try:
        prefix, extra_env = buildkit_command(docker)
    except BottleError as e:
        finding, tip = split_tip(e.message)
        return _check("buildkit", WARN, f"{finding}; `bottle build` cannot run (`bottle start` can)", tip)
    if prefix[0] == "buildx":
        version = docker.output(["buildx", "version"], check=False).splitlines()
        return _check("buildkit", OK, f"bottle build uses {version[0] if version else 'the buildx plugin'}")
    client = docker.output(["version", "--format", "{{.Client.Version}}"], check=False)
    return _check("buildkit", OK, f"bottle build uses the BuildKit built into client {client or 'unknown'} "
                  f"({' '.join(f'{k}={v}' for k, v in extra_env.items())})")


# -- images ------------------------------------------------------------------------------


def _image(docker: DockerCLI, check_id: str, role: str, image: str, fix: str) -> Check:
    result = docker.run(["image", "inspect", "--format", "{{.Id}}", image], check=False, timeout=60)
    if result.returncode == 0:
        image_id = result.stdout.decode(errors="replace").strip().removeprefix("sha256:")
        return _check(check_id, OK, f"{image} is here (image {image_id[:12]})")
    stderr = result.stderr.decode(errors="replace").strip()
    if any(s.lower() in stderr.lower() for s in MISSING_IMAGE) or not stderr:
        return _check(check_id, FAIL, f"{image} is missing: bottle start needs it for the {role}", fix)
    return _check(check_id, FAIL, f"{image} could not be inspected: {stderr}", fix)


# -- what the engine honours -------------------------------------------------------------


def probe_network(engine: str) -> dp.NetworkSpec:
    """A bottle's agent network, made exactly as the plan makes it, for a bottle named
    doctor; labelled like any bottle's, so `bottle cleanup` finds it if it is ever left."""
    manifest = parse_manifest("version: 1\nname: doctor\n", Path("bottle-doctor.yaml"))
    network = dp.docker_plan(build_plan(manifest, env={}, run_id=new_run_id()), engine).network("agent")
    return dataclasses.replace(network, labels=tuple((k, owner_label() if v == dp.OWNER else v)
                                                     for k, v in network.labels))


def _ipv6(docker: DockerCLI, engine: Engine) -> Check:
    network = probe_network(engine.name)
    created = docker.run(dp.network_create_argv(network), check=False, timeout=60)
    if created.returncode != 0:
        return _check("ipv6", FAIL, f"a bottle network could not be made: "
                      f"{created.stderr.decode(errors='replace').strip()}",
                      "bottle start makes networks like this one; see what the engine says above")
    try:
        inspected = docker.output(["network", "inspect", network.name], timeout=60)
    finally:
        removed = docker.run(["network", "rm", network.name], check=False, timeout=60)
    document = json.loads(inspected)
    details = document[0] if isinstance(document, list) else document
    enabled = bool(details.get("EnableIPv6") or details.get("ipv6_enabled"))
    subnets = [c.get("Subnet") or c.get("subnet") or "" for c in
               ((details.get("IPAM") or {}).get("Config") or details.get("subnets") or [])]
    v6 = [s for s in subnets if ":" in s]
    left = "" if removed.returncode == 0 else f" (the probe network {network.name} is left: bottle cleanup removes it)"
    if enabled or v6:
        return _check("ipv6", FAIL, f"the engine gives bottle networks IPv6 ({', '.join(v6) or 'enabled'}), "
                      f"so the agent would have an address the plan does not show{left}",
                      "turn IPv6 off for new networks: remove \"ipv6\" and \"default-network-opts\" enabling it "
                      "from /etc/docker/daemon.json (Podman: containers.conf) and restart the engine")
    how = ("the agent and scanner also turn IPv6 off (sysctl)" if engine.name == "podman"
           else "so the engine turns IPv6 off in the agent")
    return _check("ipv6", OK, f"a bottle network gets no IPv6 address, {how}{left}")


def _cgroups(engine: Engine, info: dict[str, Any]) -> Check:
    """bottle start sets --cpus, --memory (with --memory-swap) and --pids-limit on every container."""
    if engine.name == "podman":
        host = info.get("host") or {}
        controllers = set(host.get("cgroupControllers") or [])
        version = host.get("cgroupVersion") or "unknown"
        missing = [c for c in ("cpu", "memory", "pids") if c not in controllers]
        swap_missing: list[str] = []
    else:
        version = f"v{info.get('CgroupVersion')}" if info.get("CgroupVersion") else "unknown"
        missing = [name for key, name in (("CpuCfsQuota", "cpu"), ("MemoryLimit", "memory"), ("PidsLimit", "pids"))
                   if info.get(key) is False]
        swap_missing = ["swap"] if info.get("SwapLimit") is False else []
    if missing:
        return _check("cgroups", FAIL, f"the engine cannot enforce {', '.join(missing)} limits (cgroup {version}), "
                      "so a bottle would run without the limits its plan sets",
                      "enable the cgroup controllers (e.g. boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2, "
                      "or cgroup_enable=memory swapaccount=1 on the kernel command line) and restart the engine")
    if swap_missing:
        return _check("cgroups", WARN, f"cpu, memory and pids limits work (cgroup {version}); swap is not limited, "
                      "so the agent may swap beyond its memory limit",
                      "add swapaccount=1 to the kernel command line, or use cgroup v2")
    # Podman's info says which controllers there are, not whether swap is accounted.
    limits = "cpu, memory and pids" if engine.name == "podman" else "cpu, memory, swap and pids"
    return _check("cgroups", OK, f"{limits} limits are enforced (cgroup {version})")


def _disk(engine: Engine, info: dict[str, Any], env: Mapping[str, str]) -> Check:
    host_var = "CONTAINER_HOST" if engine.name == "podman" else "DOCKER_HOST"
    remote = env.get(host_var, "")
    if remote and not remote.startswith("unix://"):
        return _check("disk", SKIP, f"not checked: the engine runs elsewhere ({host_var}={remote})")
    root = ((info.get("store") or {}).get("graphRoot") if engine.name == "podman" else info.get("DockerRootDir"))
    if not root:
        return _check("disk", SKIP, "not checked: the engine does not say where it keeps its data")
    try:
        usage = shutil.disk_usage(root)
    except OSError as e:
        return _check("disk", SKIP, f"not checked: the engine's data root {root} is not visible here ({e.strerror})")
    free = f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB in {root}"
    prune = f"{engine.name} system prune"
    if usage.free < DISK_FAIL_BELOW:
        return _check("disk", FAIL, f"{free}: bottle start may fail to create containers",
                      f"free space: remove unused images and containers ({prune}), or grow the disk")
    if usage.free < DISK_WARN_BELOW:
        return _check("disk", WARN, f"{free}: enough to start bottles, tight for bottle build (about 2 GiB)",
                      f"free space: remove unused images and containers ({prune})")
    return _check("disk", OK, free)
