"""Run mitmproxy with bottle's addons (bottle.mitm.addons) loaded in-process.

    python -m bottle.mitm.launcher --policy PATH --confdir DIR [--ca FILE] [--wait-for-files SECONDS]

`--ca FILE` uses a CA that is already mounted (a Kubernetes Secret) instead of one
delivered into the confdir.

SIGHUP re-reads the policy (a broken file keeps the old one), SIGTERM/SIGINT stop.
`<confdir>/../status.json` tells the host when the proxy really serves.
"""

from __future__ import annotations

import os

# mitmproxy reads these when net/tls.py is imported and would log TLS secrets.
for _name in ("SSLKEYLOGFILE", "MITMPROXY_SSLKEYLOGFILE"):
    os.environ.pop(_name, None)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bottle.mitm.policy import Policy, PolicyError, parse_policy  # noqa: E402
from bottle.mitm.receive import WAITING_DIR, write_atomic  # noqa: E402
from bottle.mitm.state import Runtime  # noqa: E402
from bottle.mitm.upstream import GuardedEventLoop  # noqa: E402

SCANNER_PROBE_SECONDS = 30.0
# The host starts the proxy's policy delivery as soon as pipelock is healthy, so the
# first probes usually succeed; a short interval keeps a late one off the start time.
SCANNER_PROBE_INTERVAL = 0.05


def write_status(path: Path, state: str, policy_sha256: str | None, error: str | None) -> None:
    body = {"state": state, "policy_sha256": policy_sha256, "error": error, "pid": os.getpid()}
    write_atomic(path, (json.dumps(body) + "\n").encode(), 0o644)
    # Wake whoever waits for this (bottle.mitm.receive), instead of letting them poll.
    waiting = path.parent / WAITING_DIR
    for name in os.listdir(waiting) if waiting.is_dir() else ():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(name), signal.SIGUSR1)


def log_event(**fields: Any) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sys.stdout.write(json.dumps({"time": now, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def read_policy(path: Path) -> tuple[Policy, str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8") from None
    return parse_policy(text), hashlib.sha256(raw).hexdigest()


def write_trust_bundle(policy: Policy, path: Path) -> Path:
    """certifi plus the policy's upstream CA: setting the option replaces certifi."""
    import certifi

    data = Path(certifi.where()).read_bytes()
    if policy.upstream_ca:
        extra = Path(policy.upstream_ca).read_bytes()
        # OpenSSL silently skips PEM blocks it cannot parse; an upstream CA the operator
        # asked for must either load or stop the proxy with a reason.
        from cryptography import x509

        try:
            if not x509.load_pem_x509_certificates(extra):
                raise ValueError("no certificate")
        except ValueError as e:
            raise PolicyError(f"upstream_ca {policy.upstream_ca} holds no valid PEM certificate: {e}") from None
        data += b"\n" + extra
    write_atomic(path, data, 0o644)
    return path


def link_ca(ca: Path, confdir: Path) -> None:
    """Point mitmproxy's CA file at a read-only mounted one; mitmproxy writes other files
    into the confdir, so the confdir itself cannot be that mount."""
    confdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = confdir / "mitmproxy-ca.pem"
    if not target.is_symlink() or target.readlink() != ca:
        target.unlink(missing_ok=True)
        target.symlink_to(ca)


def wait_for_files(paths: list[Path], seconds: float) -> None:
    """Wait until every path exists. bottle.mitm.receive SIGHUPs the pid in launcher.pid
    once it has written them (SIGHUP is blocked, see main); the timeout only bounds a
    missed wake-up."""
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = ", ".join(str(p) for p in paths if not p.exists())
            raise FileNotFoundError(f"still missing after {seconds:g}s: {missing}")
        signal.sigtimedwait({signal.SIGHUP}, min(remaining, 1.0))


class Launcher:
    def __init__(self, policy_path: Path, confdir: Path) -> None:
        self.policy_path = policy_path
        self.confdir = confdir
        self.state_dir = confdir.parent
        self.status_path = self.state_dir / "status.json"
        self.trust_path = confdir / "bottle-upstream-trust.pem"
        self.policy: Policy | None = None
        self.sha256: str | None = None
        self.runtime = Runtime()
        self.master: Any = None
        self.dns: Any = None
        self.served = False

    def _scanner_for(self, policy: Policy) -> Any:
        from bottle.mitm.scanner import ScannerClient

        return ScannerClient(policy.scanner.url, policy.scanner.token, policy.scanner.timeout_seconds)

    async def run(self) -> int:
        from mitmproxy import options

        from bottle.mitm.addons import make_addons
        from bottle.mitm.scanner import probe_scanner

        loop = asyncio.get_running_loop()
        try:
            self.policy, self.sha256 = read_policy(self.policy_path)
            write_trust_bundle(self.policy, self.trust_path)
        except (OSError, PolicyError) as e:
            return self._fail(f"cannot load policy {self.policy_path}: {e}")
        self.runtime.replace(self.policy, self._scanner_for(self.policy))
        if isinstance(loop, GuardedEventLoop):
            loop.runtime = self.runtime

        opts = options.Options()
        self.master = make_master(opts)
        # stdout carries only JSON log lines; mitmproxy's own messages are diagnostics.
        if self.master._termlog_addon is not None:
            self.master._termlog_addon.logger.file = sys.stderr
        self.master.addons.add(*make_addons(self.runtime), _StatusOnRunning(self))
        listen = self.policy.listen
        # With transparent capture the agent's redirected connections arrive at one listener
        # per captured port (bottle.mitm.transparent); proxy-aware clients keep the regular one.
        captured = self.policy.transparent.ports if self.policy.transparent else ()
        modes = [f"regular@{listen.host}:{listen.port}", *(f"transparent@{listen.host}:{p.listen}" for p in captured)]
        opts.update(
            mode=modes,
            confdir=str(self.confdir),
            # The upstream connection (TCP and TLS, no request byte) is made as soon as the
            # tunnel is allowed, so it overlaps the agent's TLS handshake and pipelock's scan
            # instead of following them; a request goes upstream only after its verdict.
            # Not with transparent listeners: there the destination is known only from the
            # SNI or Host header (bottle.mitm.transparent), and an eager connection would go
            # to the address the agent dialled, which is never a destination.
            connection_strategy="lazy" if captured else "eager",
            upstream_cert=False,
            rawtcp=False,
            http3=False,
            termlog_verbosity="warn",
            store_streamed_bodies=False,
            ssl_verify_upstream_trusted_ca=str(self.trust_path),
            # Bounds only request bodies bottle buffers to scan (bottle.mitm.patches).
            body_size_limit=str(self.policy.scanner.max_body_bytes),
        )
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.master.shutdown)
        loop.add_signal_handler(signal.SIGINT, self.master.shutdown)
        # Blocked since main; one that arrived meanwhile is delivered now, as a reload.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        (self.state_dir / "launcher.pid").write_text(f"{os.getpid()}\n")

        if self.policy.dns is not None:
            from bottle.mitm.dns import DnsResponder

            self.dns = DnsResponder(self.runtime)
            await self.dns.start(self.policy.dns.host, self.policy.dns.port)

        deadline = time.monotonic() + SCANNER_PROBE_SECONDS
        while not await probe_scanner(self.policy.scanner.url):
            if time.monotonic() > deadline:
                print(f"bottle: scanner at {self.policy.scanner.url} never answered; serving, "
                      "requests fail closed with 503 until it does", file=sys.stderr, flush=True)
                break
            await asyncio.sleep(SCANNER_PROBE_INTERVAL)
        try:
            await self.master.run()
        finally:
            if self.dns is not None:
                self.dns.close()
        if not self.served:
            return self._fail("mitmproxy stopped before it was serving (see messages above)")
        return 0

    def mark_serving(self) -> None:
        self.served = True
        write_status(self.status_path, "serving", self.sha256, None)
        print(f"bottle: proxy serving on {self.policy.listen.host}:{self.policy.listen.port}", file=sys.stderr, flush=True)

    def reload(self) -> None:
        try:
            policy, sha = read_policy(self.policy_path)
            if sha == self.sha256:
                # The policy being served (e.g. a wake-up SIGHUP that came late): nothing to do.
                write_status(self.status_path, "serving", sha, None)
                return
            fixed = (self.policy.listen, self.policy.dns, self.policy.transparent)
            if (policy.listen, policy.dns, policy.transparent) != fixed:
                raise PolicyError("listen, dns and transparent cannot change on reload; restart the proxy")
            if policy.upstream_ca != self.policy.upstream_ca:
                write_trust_bundle(policy, self.trust_path)
                self.master.options.update(ssl_verify_upstream_trusted_ca=str(self.trust_path))
            if policy.scanner.max_body_bytes != self.policy.scanner.max_body_bytes:
                self.master.options.update(body_size_limit=str(policy.scanner.max_body_bytes))
        except Exception as e:
            message = f"policy reload failed, keeping the previous policy: {e}"
            print(f"bottle: {message}", file=sys.stderr, flush=True)
            log_event(event="policy_reload", decision="block", reason=message, policy_sha256=self.sha256)
            write_status(self.status_path, "error", self.sha256, message)
            return
        scanner = self.runtime.scanner
        if policy.scanner != self.policy.scanner:
            scanner = self._scanner_for(policy)
        self.runtime.replace(policy, scanner)
        self.policy, self.sha256 = policy, sha
        log_event(event="policy_reload", decision="allow", reason="policy reloaded", policy_sha256=sha)
        write_status(self.status_path, "serving", sha, None)

    def _fail(self, message: str) -> int:
        print(f"bottle: {message}", file=sys.stderr, flush=True)
        try:
            write_status(self.status_path, "error", self.sha256, message)
        except OSError:
            pass
        return 1


def make_master(opts: Any) -> Any:
    """mitmproxy with only the addons bottle's proxy needs, before bottle's own.

    mitmdump loads some thirty addons (playback, map/modify rules, cookies, scripts, export,
    the onboarding app, …) and calls every one of them for every event of every flow;
    none of them is used here, each is one more thing that could act on traffic, and
    dispatching to them is most of mitmproxy's per-request cost. What remains: options and
    commands (Core), listeners and connections (Proxyserver), choosing each connection's
    layers (NextLayer), certificates (TlsConfig), refusing h2c upgrades that would smuggle
    requests past the HTTP/2 layer (DisableH2C), and failing the start on errors (ErrorCheck).
    """
    from mitmproxy import master
    from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

    m = master.Master(opts, with_termlog=True)
    m.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
                 disable_h2c.DisableH2C(), errorcheck.ErrorCheck())
    return m


class _StatusOnRunning:
    """mitmproxy calls `running` once its listeners are bound."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def running(self) -> None:
        self.launcher.mark_serving()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bottle.mitm.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", required=True, type=Path)
    parser.add_argument("--confdir", required=True, type=Path)
    parser.add_argument("--ca", type=Path, metavar="FILE")
    parser.add_argument("--wait-for-files", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    launcher = Launcher(args.policy, args.confdir)
    if args.ca is not None:
        link_ca(args.ca, args.confdir)
    # SIGHUP wakes the wait for files below and later reloads the policy; until run()
    # handles it, it stays blocked (pending, not fatal).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    with contextlib.suppress(OSError):
        (launcher.state_dir / "launcher.pid").write_text(f"{os.getpid()}\n")
    # Importing mitmproxy takes most of a second; do it while the host is still
    # delivering the policy and CA, not after.
    import mitmproxy.master  # noqa: F401

    import bottle.mitm.addons  # noqa: F401
    from bottle.mitm import patches

    patches.install()
    patches.install_original_port(lambda listen: launcher.policy.transparent.original_port(listen)
                                  if launcher.policy and launcher.policy.transparent else None)
    try:
        wait_for_files([args.policy, args.confdir / "mitmproxy-ca.pem"], args.wait_for_files)
    except FileNotFoundError as e:
        return launcher._fail(str(e))
    # A wake-up that came while the files were being checked is not a reload: run() reads
    # them after this.
    while signal.sigtimedwait({signal.SIGHUP}, 0) is not None:
        pass
    with asyncio.Runner(loop_factory=GuardedEventLoop) as runner:
        return runner.run(launcher.run())


if __name__ == "__main__":
    sys.exit(main())
