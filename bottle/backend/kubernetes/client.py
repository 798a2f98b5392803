"""The only module that talks to a Kubernetes API server (through the official client).

Every failure becomes a BackendError naming the server, the object and what the API
server said, so a user never sees a traceback. Objects go out and come back as plain
dicts: what was sent is what the dry-run printed, and what comes back is the server's
own JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bottle.errors import BackendError

REQUEST_TIMEOUT = (10, 60)  # connect, read (seconds)
INSTALL_TIP = "install the Kubernetes backend's client: pip install 'bottle[kubernetes]'"

# kind -> (API group attribute, the client's method suffix, the list path under a namespace)
KINDS: Mapping[str, tuple[str, str]] = {
    "ConfigMap": ("core", "config_map"),
    "Secret": ("core", "secret"),
    "Pod": ("core", "pod"),
    "NetworkPolicy": ("networking", "network_policy"),
}


def _client_modules():
    try:
        import kubernetes.client
        import kubernetes.config
        import kubernetes.stream
        import urllib3
    except ImportError:
        raise BackendError("the kubernetes backend needs the `kubernetes` Python package, which is not installed",
                           tip=INSTALL_TIP) from None
    return kubernetes, urllib3


def kubeconfig_paths(env: Mapping[str, str]) -> list[Path]:
    """The user's kubeconfig files: $KUBECONFIG (a list), else ~/.kube/config."""
    value = env.get("KUBECONFIG") or os.path.join(os.path.expanduser("~"), ".kube", "config")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def _describe(paths: Sequence[Path]) -> str:
    return os.pathsep.join(str(p) for p in paths)


def _load_contexts(env: Mapping[str, str]) -> tuple[list[dict], dict | None]:
    kubernetes, _ = _client_modules()
    paths = kubeconfig_paths(env)
    try:
        return kubernetes.config.list_kube_config_contexts(config_file=_describe(paths))
    except Exception as e:  # the client raises many types for a malformed file
        raise BackendError(f"cannot read the kubeconfig {_describe(paths)}: {_one_line(e)}") from None


def context_namespace(env: Mapping[str, str], context: str | None) -> str | None:
    """The namespace the chosen kubeconfig context names, if any. None when there is no
    kubeconfig at all (the API connection then fails with its own clear error)."""
    if not any(p.exists() for p in kubeconfig_paths(env)):
        return None
    contexts, current = _load_contexts(env)
    chosen = current if context is None else next((c for c in contexts if c.get("name") == context), None)
    if chosen is None:
        if context is None:
            return None
        raise BackendError(f"the kubeconfig {_describe(kubeconfig_paths(env))} has no context {context!r}",
                           tip="see `kubectl config get-contexts`")
    return (chosen.get("context") or {}).get("namespace")


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


class Cluster:
    """A connection to one API server, as one kubeconfig context describes it."""

    def __init__(self, api_client: Any, *, server: str, context: str) -> None:
        kubernetes, self._urllib3 = _client_modules()
        self._kubernetes = kubernetes
        self.api = api_client
        self.server = server
        self.context = context
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)

    @classmethod
    def connect(cls, env: Mapping[str, str], *, context: str | None) -> Cluster:
        kubernetes, _ = _client_modules()
        paths = kubeconfig_paths(env)
        if not any(p.exists() for p in paths):
            raise BackendError(f"no kubeconfig: {_describe(paths)} does not exist",
                               tip="set KUBECONFIG to your cluster's kubeconfig file")
        contexts, current = _load_contexts(env)
        name = context or (current or {}).get("name")
        if not name or not any(c.get("name") == name for c in contexts):
            raise BackendError(f"the kubeconfig {_describe(paths)} has no context {name!r}" if name
                               else f"the kubeconfig {_describe(paths)} sets no current context",
                               tip="pass --context, or see `kubectl config get-contexts`")
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(config_file=_describe(paths), context=name,
                                               client_configuration=configuration, persist_config=False)
        except Exception as e:  # malformed users, clusters, certificates, exec plugins
            raise BackendError(f"cannot use context {name!r} of the kubeconfig {_describe(paths)}: "
                               f"{_one_line(e)}") from None
        # One retry: an unreachable server should be reported in seconds, not retried for long.
        configuration.retries = 1
        return cls(kubernetes.client.ApiClient(configuration), server=configuration.host, context=name)

    # -- errors ---------------------------------------------------------------------

    def _unreachable(self, e: Exception) -> BackendError:
        reason = getattr(e, "reason", None) or e
        text = _one_line(reason)
        for noise in ("Failed to establish a new connection: ", "Max retries exceeded with url: "):
            if noise in text:
                text = text.split(noise, 1)[1]
        return BackendError(f"the Kubernetes API server at {self.server} is unreachable: {text}",
                            tip=f"check that the cluster of kubeconfig context {self.context!r} is running "
                            "and reachable from here")

    def _refused(self, what: str, e: Any) -> BackendError:
        message = e.reason or ""
        try:
            message = json.loads(e.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        if e.status == 401:
            return BackendError(f"the Kubernetes API server at {self.server} refused the credentials of "
                                f"kubeconfig context {self.context!r} (401 Unauthorized)",
                                tip="log in to the cluster again, or check the context's user")
        return BackendError(f"{what} failed ({e.status}): {message}")

    def call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a client method; returns the server's JSON as a dict."""
        try:
            response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except self._kubernetes.client.exceptions.ApiException as e:
            raise self._refused(what, e) from None
        except self._urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from None
        data = response.data
        return json.loads(data) if data else {}

    def _method(self, verb: str, kind: str) -> Any:
        group, suffix = KINDS[kind]
        return getattr(getattr(self, group), f"{verb}_namespaced_{suffix}")

    # -- objects --------------------------------------------------------------------

    def check_namespace(self, namespace: str) -> None:
        try:
            self.call(f"reading namespace {namespace}", self.core.read_namespace, namespace)
        except BackendError as e:
            if "(404)" in e.message:
                raise BackendError(f"the namespace {namespace!r} does not exist in context {self.context!r}",
                                   tip=f"create it (kubectl create namespace {namespace}) or pick another "
                                   "with --namespace") from None
            if "(403)" not in e.message:  # reading namespaces may be forbidden; creating objects is what counts
                raise

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kind, meta = body["kind"], body["metadata"]
        return self.call(f"creating {kind} {meta['name']} in namespace {meta['namespace']}",
                         self._method("create", kind), meta["namespace"], body)

    def read(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.call(f"reading {kind} {name}", self._method("read", kind), name, namespace)
        except BackendError as e:
            if "(404)" in e.message:
                return None
            raise

    def list(self, namespace: str, kind: str, selector: str) -> list[dict[str, Any]]:
        return self.call(f"listing {kind}s labelled {selector} in namespace {namespace}",
                         self._method("list", kind), namespace, label_selector=selector)["items"]

    def delete(self, namespace: str, kind: str, name: str, *, grace_period_seconds: int | None = None,
               propagation_policy: str | None = None) -> None:
        """Delete one object; one that is already gone is fine."""
        options = {}
        if grace_period_seconds is not None:
            options["grace_period_seconds"] = grace_period_seconds
        if propagation_policy is not None:
            options["propagation_policy"] = propagation_policy
        try:
            self.call(f"deleting {kind} {name}", self._method("delete", kind), name, namespace, **options)
        except BackendError as e:
            if "(404)" not in e.message:
                raise

    # -- Pods -----------------------------------------------------------------------

    def log(self, namespace: str, pod: str, container: str, *, tail_lines: int | None = None) -> bytes:
        kwargs = {"tail_lines": tail_lines} if tail_lines else {}
        try:
            response = self.core.read_namespaced_pod_log(pod, namespace, container=container, _preload_content=False,
                                                         _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except (self._kubernetes.client.exceptions.ApiException, self._urllib3.exceptions.HTTPError):
            return b""
        return response.data

    def follow_log(self, namespace: str, pod: str, container: str) -> Any:
        """A streaming response of the container's log (iterate `.stream()`; `.release_conn()` ends it)."""
        try:
            return self.core.read_namespaced_pod_log(pod, namespace, container=container, follow=True,
                                                     _preload_content=False)
        except self._kubernetes.client.exceptions.ApiException as e:
            raise self._refused(f"following the log of {pod}/{container}", e) from None
        except self._urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from None

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str], *, stdin: bool,
             tty: bool) -> Any:
        """A websocket exec session (bytes in and out); `returncode` once it is closed."""
        try:
            return self._kubernetes.stream.stream(
                self.core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                command=list(command), stdin=stdin, stdout=True, stderr=True, tty=tty,
                _preload_content=False, binary=True,
            )
        except self._kubernetes.client.exceptions.ApiException as e:
            raise BackendError(f"running a command in {pod}/{container} failed: {_one_line(e.reason or e)}") from None

    def run(self, namespace: str, pod: str, container: str, command: Sequence[str], *, input: bytes,
            timeout: float) -> tuple[int, bytes, bytes]:
        """Run a command with `input` on its stdin; its exit code, stdout and stderr."""
        import time

        session = self.exec(namespace, pod, container, command, stdin=True, tty=False)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            session.write_stdin(input)
            session.close_channel(0)
            while session.is_open() and time.monotonic() < deadline:
                session.update(timeout=1)
                out += session.read_stdout(timeout=0) or b""
                err += session.read_stderr(timeout=0) or b""
            if session.is_open():
                raise BackendError(f"`{' '.join(command)}` in {pod}/{container} did not finish within {timeout:g} s")
            out += session.read_stdout(timeout=0) or b""
            err += session.read_stderr(timeout=0) or b""
            try:
                code = session.returncode
            except Exception:  # the status channel never arrived
                raise BackendError(f"the connection to {pod}/{container} ended before "
                                   f"`{' '.join(command)}` reported its exit status") from None
            return code, bytes(out), bytes(err)
        finally:
            session.close()
