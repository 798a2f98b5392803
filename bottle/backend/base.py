"""The backend interface. The orchestration in bottle/run.py and the CLI only know this.

A backend turns the backend-agnostic `BottlePlan` into a plan of its own (`plan()`: pure,
touches no engine or cluster), which the dry-run prints and `launch()` carries out.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from bottle import __version__
from bottle.errors import NotSupportedError
from bottle.launch.secrets import LaunchSecrets
from bottle.plan import PROXY_PORT, BottlePlan

# Set to keep every resource of a bottle after it ends, for debugging (`bottle cleanup` removes them).
KEEP_ENV = "BOTTLE_KEEP"

# What every backend's resources are labelled with, so teardown and `bottle cleanup` find them.
LABEL_PREFIX = "dev.bottle"
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
BOTTLE_LABEL = f"{LABEL_PREFIX}.bottle"
ROLE_LABEL = f"{LABEL_PREFIX}.role"
OWNER_LABEL = f"{LABEL_PREFIX}.owner"
VERSION_LABEL = f"{LABEL_PREFIX}.version"

# Values only the launch knows appear in plans as markers that the launch substitutes.
OWNER = "<host:pid>"
PROXY_IP = "<proxy-ip>"


def placeholder_marker(token_ref: str) -> str:
    return f"<placeholder:{token_ref}>"


# Where the agent's trust store has the bottle's CA: update-ca-certificates' place for
# local CAs, and the merged bundle (public roots + the bottle CA) tools are pointed at.
AGENT_CA_FILE = "/usr/local/share/ca-certificates/bottle-egress-ca.crt"
AGENT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def agent_environment(plan: BottlePlan) -> tuple[tuple[str, str], ...]:
    """The agent's environment on every backend: everything through the proxy, the merged
    trust bundle (these variables *replace* trust stores, so never the CA alone; 0003),
    placeholders for credentials, then the manifest's own variables."""
    proxy_url = f"http://{PROXY_IP}:{PROXY_PORT}"
    return (
        ("HTTPS_PROXY", proxy_url),
        ("https_proxy", proxy_url),
        ("HTTP_PROXY", proxy_url),
        ("http_proxy", proxy_url),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
        ("no_proxy", "localhost,127.0.0.1,::1"),
        ("NODE_USE_ENV_PROXY", "1"),
        ("SSL_CERT_FILE", AGENT_CA_BUNDLE),
        ("REQUESTS_CA_BUNDLE", AGENT_CA_BUNDLE),
        ("CURL_CA_BUNDLE", AGENT_CA_BUNDLE),
        ("GIT_SSL_CAINFO", AGENT_CA_BUNDLE),
        ("PIP_CERT", AGENT_CA_BUNDLE),
        ("NODE_EXTRA_CA_CERTS", AGENT_CA_FILE),
        *((ref, placeholder_marker(ref)) for ref in plan.egress.token_refs),
        *((("HOME", plan.agent.home),) if plan.agent.home else ()),
        *plan.agent.env,
    )


def bottle_labels(plan: BottlePlan, role: str) -> tuple[tuple[str, str], ...]:
    return (
        (MANAGED_LABEL, "true"),
        (BOTTLE_LABEL, plan.bottle_id),
        (ROLE_LABEL, role),
    )


class BackendPlan(Protocol):
    """Everything a backend will create for one bottle, exactly as it will create it."""

    @property
    def bottle(self) -> BottlePlan: ...

    def to_dict(self) -> dict[str, Any]:
        """The `bottle start --dry-run --format=json` document (docs/dry-run-json.md)."""
        ...

    def render_text(self) -> str:
        """What `bottle start --dry-run` prints."""
        ...


P = TypeVar("P", bound=BackendPlan)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunningBottle:
    """A launched bottle whose proxy is serving and whose agent trusts the bottle's CA."""

    bottle_id: str
    agent: str
    proxy: str
    scanner: str
    addresses: Mapping[str, str]
    # Transparent capture: the helper that lists what the capture rejected, run before teardown.
    capture_report: tuple[str, ...] | None = None


class BottleBackend(abc.ABC, Generic[P]):
    """Turns a BottlePlan into its own plan P, P into running resources, and removes them again."""

    name: ClassVar[str] = ""

    def plan(self, bottle: BottlePlan) -> P:
        """This backend's plan for `bottle`; makes no contact with an engine or cluster."""
        raise NotImplementedError(f"the {self.name or type(self).__name__} backend makes no plan")

    @abc.abstractmethod
    def launch(self, plan: P, secrets: LaunchSecrets, *, env: Mapping[str, str]) -> contextlib.AbstractContextManager[RunningBottle]:
        """Create and start everything in `plan` (made by `self.plan()`), wait until it is
        ready, and remove it all on exit, however the block is left. A failure while
        starting removes what was made and raises."""

    @abc.abstractmethod
    def follow_egress_log(self, running: RunningBottle, path: Path) -> contextlib.AbstractContextManager[None]:
        """Copy the proxy's JSON request log to `path` while the block runs, completely at exit."""

    @abc.abstractmethod
    def run_agent(self, running: RunningBottle, command: Sequence[str], *, interactive: bool) -> int:
        """Run the agent command in the bottle and return its exit code."""

    def watch(self, running: RunningBottle, say: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
        """While the block runs, notice a scanner or proxy that dies and comes back, saying
        each on `say` (docs/prds/0013-live-policy-and-component-health.md). The default
        watches nothing (Kubernetes: the kubelet restarts containers of the pods)."""
        return contextlib.nullcontext()

    def live_bottle(self, ref: str) -> Any:
        """The running bottle `ref` names, as `bottle reload` compares it (bottle.reload.LiveBottle)."""
        raise NotSupportedError(f"`bottle reload` is not supported by the {self.name} backend yet; "
                                "stop the bottle and start it with the new manifest")

    def planned_fixed(self, plan: P) -> Mapping[str, Any]:
        """What `plan` fixes at create, in the terms `live_bottle` reads back."""
        raise NotSupportedError(f"`bottle reload` is not supported by the {self.name} backend yet")

    def apply_update(self, live: Any, update: dict) -> dict:
        """Send the reloadable policy `update` into the running proxy; its answer."""
        raise NotSupportedError(f"`bottle reload` is not supported by the {self.name} backend yet")

    def policy_reload_logged(self, live: Any, sha256: str, timeout: float = 10.0) -> dict | None:
        return None

    @abc.abstractmethod
    def cleanup(self, *, remove_running: bool, dry_run: bool, echo: Callable[[str], None]) -> int:
        """Remove leftovers of bottles whose `bottle start` is gone. Returns how many were removed."""

    # -- operating running bottles (`bottle ps|exec|stop`, docs/prds/0012) ------------------
    # A backend that cannot do these says so; `bottle start -d` needs all three.
    supports_detached: ClassVar[bool] = False

    def components(self, bottle_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """For each bottle id: role (agent, proxy, pipelock) -> "running", "healthy", or what
        is wrong ("exited", "unhealthy", "missing"). Bottles this backend cannot see are left out."""
        return {}

    def exec_argv(self, bottle_id: str, command: Sequence[str], *, stdin: bool, tty: bool) -> list[str]:
        """The argv that runs `command` in the bottle's agent as the agent's user, with the
        agent's environment and none of the host's."""
        from bottle.errors import NotSupportedError

        raise NotSupportedError(f"`bottle exec` is not supported on the {self.name} backend yet")

    def remove_bottle(self, bottle_id: str, *, echo: Callable[[str], None]) -> int:
        """Remove every object labelled with `bottle_id` (what `bottle cleanup` would remove of
        it); returns how many were removed."""
        from bottle.errors import NotSupportedError

        raise NotSupportedError(f"removing one bottle is not supported on the {self.name} backend yet")


def owner_label() -> str:
    """The value that replaces OWNER: this `bottle start` process, as host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the `bottle start` named by an owner value still runs (on this host)."""
    host, _, pid = owner.rpartition(":")
    if not pid.isdigit():
        return False
    from bottle.state import process_alive

    # Also a zombie is gone: a SIGKILLed supervisor nobody reaped must not hold its bottle.
    return process_alive({"host": host, "pid": int(pid)})
