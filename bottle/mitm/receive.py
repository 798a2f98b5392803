"""Receive the proxy's secrets as a tar stream on stdin, so the CA key never touches host disk.

    python -m bottle.mitm.receive --dir /run/bottle [--timeout 30] [--reach ADDRESS]

Accepts only mitmproxy-ca.pem, policy.json and upstream-ca.pem (regular files, no
paths), writes each 0600 atomically, SIGHUPs a running launcher, then waits for
status.json to report `serving` with the new policy's sha256. mitmproxy-ca.pem may be
left out when the proxy already has its CA (mounted from a Kubernetes Secret).

--reach first checks that packets pass between the proxy and ADDRESS (the agent): a
connection to a port nothing listens on must be refused (or accepted), not time out;
a timeout means something on the host drops them. It exits 3 then, so the host can say
what to fix. Doing it here saves the host a second exec and Python start; --reach-only
does just the check (for a start that must run something between it and the delivery).

--show prints the policy being served without its secrets (bottle.mitm.reload.public_view),
its sha256 and the upstream CA's sha256, as JSON on stdout.

--reload reads a JSON update of the reloadable parts (bottle.mitm.reload) on stdin, merges
it into the current policy.json, validates the result with the proxy's own parse_policy,
writes it atomically, SIGHUPs the launcher and waits until it serves the new sha256. If the
launcher refuses it, the previous file is put back, so a restarted proxy never reads a
policy that failed. It prints {"changed", "policy_sha256", "previous_sha256"} as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import tarfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import BinaryIO

MAX_FILE_BYTES = 16 * 1024 * 1024
# What `--reach` fails with: nothing to do with the files, everything with the host.
EXIT_UNREACHABLE = 3
UNUSED_PORT = 9  # discard: nothing in the agent listens on it
# Under --dir: one empty file per process waiting for status.json, named by its pid;
# the launcher SIGUSR1s each when it writes status.json.
WAITING_DIR = "waiting"


class ReceiveError(Exception):
    pass


def destinations(root: Path) -> dict[str, Path]:
    return {
        "mitmproxy-ca.pem": root / "mitmproxy" / "mitmproxy-ca.pem",
        "policy.json": root / "policy.json",
        "upstream-ca.pem": root / "upstream-ca.pem",
    }


def read_members(stream: BinaryIO, *, ca_present: bool = False) -> dict[str, bytes]:
    """Names to contents; anything but the expected plain files is an error."""
    allowed = destinations(Path("/")).keys()
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name not in allowed:
                    raise ReceiveError(f"unexpected tar member {member.name!r}")
                if not member.isreg():
                    raise ReceiveError(f"tar member {member.name!r} is not a regular file")
                if member.size > MAX_FILE_BYTES:
                    raise ReceiveError(f"tar member {member.name!r} is too large")
                if name in files:
                    raise ReceiveError(f"tar member {member.name!r} appears twice")
                f = tar.extractfile(member)
                files[name] = f.read() if f else b""
    except tarfile.TarError as e:
        raise ReceiveError(f"not a valid tar stream: {e}") from None
    for required in ("policy.json",) if ca_present else ("mitmproxy-ca.pem", "policy.json"):
        if required not in files:
            raise ReceiveError(f"tar stream lacks {required}")
    return files


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = destinations(root)[name]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` by `data` in one rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def show(root: Path) -> dict:
    """The served policy as the host may see it: no placeholder value, no scanner token."""
    from bottle.mitm.reload import public_view

    raw = destinations(root)["policy.json"].read_bytes()
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ReceiveError(f"the proxy's policy.json is not JSON: {e}") from None
    upstream_ca = destinations(root)["upstream-ca.pem"]
    return {
        "policy": public_view(document),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "upstream_ca_sha256": hashlib.sha256(upstream_ca.read_bytes()).hexdigest() if upstream_ca.exists() else None,
    }


def merged_policy(current: bytes, update_text: bytes) -> bytes:
    """The current policy with the update merged in, validated as the proxy will read it."""
    from bottle.mitm.policy import PolicyError, parse_policy
    from bottle.mitm.reload import UpdateError, merge_update

    try:
        update = json.loads(update_text)
        merged = merge_update(json.loads(current), update)
    except json.JSONDecodeError as e:
        raise ReceiveError(f"the update is not JSON: {e}") from None
    except UpdateError as e:
        raise ReceiveError(str(e)) from None
    text = json.dumps(merged, indent=2) + "\n"
    try:
        parse_policy(text)
    except PolicyError as e:
        raise ReceiveError(f"the new policy is not valid: {e}") from None
    return text.encode()


def reload(root: Path, update_text: bytes, timeout: float, waiting: Path) -> dict:
    """Merge, write, signal, wait; on any failure the previous policy.json is back on disk."""
    path = destinations(root)["policy.json"]
    with open(root / ".reload.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one reload at a time
        current = path.read_bytes()
        mode = path.stat().st_mode & 0o777
        new = merged_policy(current, update_text)
        previous_sha, sha = hashlib.sha256(current).hexdigest(), hashlib.sha256(new).hexdigest()
        if sha == previous_sha:
            return {"changed": False, "policy_sha256": sha, "previous_sha256": previous_sha}
        since = time.time() - 0.05
        waiting.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        waiting.touch()
        write_atomic(path, new, mode)
        try:
            if not signal_launcher(root):
                raise ReceiveError("no launcher runs in this proxy (launcher.pid)")
            wait_for_status(root, sha, timeout, since)
        except BaseException:
            write_atomic(path, current, mode)
            raise
    return {"changed": True, "policy_sha256": sha, "previous_sha256": previous_sha}


def signal_launcher(root: Path) -> bool:
    try:
        pid = int((root / "launcher.pid").read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def wait_for_status(root: Path, sha256: str, timeout: float, since: float) -> None:
    """Wait for `serving` with sha256; an `error` written after `since` ends the wait.
    The launcher SIGUSR1s every pid in waiting/ when it writes status.json (SIGUSR1 is
    blocked here, see main); the timeout only bounds a missed wake-up."""
    deadline = time.monotonic() + timeout
    status_path = root / "status.json"
    while True:
        try:
            status = json.loads(status_path.read_text())
            written = status_path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            status, written = {}, 0.0
        if status.get("state") == "serving" and status.get("policy_sha256") == sha256:
            return
        if status.get("state") == "error" and written >= since:
            raise ReceiveError(f"proxy reported an error: {status.get('error')}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReceiveError(f"proxy did not report serving policy sha256 {sha256[:12]} within {timeout:g}s")
        signal.sigtimedwait({signal.SIGUSR1}, min(remaining, 0.5))


def check_reach(address: str, timeout: float, port: int = UNUSED_PORT) -> None:
    """Raise OSError unless a connection to `address` is refused or accepted in time."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            pass


@contextlib.contextmanager
def woken_by(signum: int) -> Iterator[None]:
    """Hold `signum` pending for sigtimedwait instead of letting it kill the process.
    Ignored but blocked, it still queues; on the way out, whatever is pending is dropped."""
    previous = signal.signal(signum, signal.SIG_IGN)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signum, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bottle.mitm.receive", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--reach", metavar="ADDRESS")
    parser.add_argument("--reach-timeout", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--reach-only", action="store_true", help="check --reach and receive nothing")
    parser.add_argument("--show", action="store_true", help="print the served policy without its secrets")
    parser.add_argument("--reload", action="store_true", help="merge a JSON update from stdin into the policy")
    args = parser.parse_args(argv)
    if args.show:
        try:
            print(json.dumps(show(args.dir)), flush=True)
        except (ReceiveError, OSError) as e:
            print(f"bottle: reading the proxy's policy failed: {e}", file=sys.stderr, flush=True)
            return 1
        return 0
    if args.reload:
        waiting = args.dir / WAITING_DIR / str(os.getpid())
        with woken_by(signal.SIGUSR1):
            try:
                result = reload(args.dir, sys.stdin.buffer.read(MAX_FILE_BYTES + 1), args.timeout, waiting)
            except (ReceiveError, OSError) as e:
                print(f"bottle: reload refused, the previous policy stays: {e}", file=sys.stderr, flush=True)
                return 1
            finally:
                waiting.unlink(missing_ok=True)
        print(json.dumps(result), flush=True)
        return 0
    if args.reach:
        try:
            check_reach(args.reach, args.reach_timeout)
        except OSError as e:
            print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return EXIT_UNREACHABLE
    if args.reach_only:
        return 0
    waiting = args.dir / WAITING_DIR / str(os.getpid())
    with woken_by(signal.SIGUSR1):
        return _receive(args, waiting)


def _receive(args: argparse.Namespace, waiting: Path) -> int:
    try:
        files = read_members(sys.stdin.buffer, ca_present=destinations(args.dir)["mitmproxy-ca.pem"].exists())
        since = time.time() - 0.05
        waiting.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        waiting.touch()
        write_files(args.dir, files)
        signal_launcher(args.dir)
        wait_for_status(args.dir, hashlib.sha256(files["policy.json"]).hexdigest(), args.timeout, since)
    except (ReceiveError, OSError) as e:
        print(f"bottle: receiving proxy files failed: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        waiting.unlink(missing_ok=True)
    print("bottle: proxy files received; proxy is serving the new policy", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
