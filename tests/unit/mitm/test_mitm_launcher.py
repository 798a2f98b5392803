from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from bottle.mitm import launcher as launcher_module
from bottle.mitm import receive
from bottle.mitm.launcher import Launcher, read_policy
from mitm_fixture import policy_text


def make_launcher(tmp_path, text):
    confdir = tmp_path / "mitmproxy"
    confdir.mkdir()
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(text)
    launcher = Launcher(policy_path, confdir)
    launcher.policy, launcher.sha256 = read_policy(policy_path)
    launcher.runtime.replace(launcher.policy, object())
    return launcher


async def reload_in_loop(launcher):
    launcher.reload()


def status(tmp_path):
    return json.loads((tmp_path / "status.json").read_text())


@pytest.mark.parametrize("new_text, message", [
    ("{broken", "policy reload failed, keeping the previous policy: policy is not valid JSON: "
                "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (policy_text(mode="sometimes"), "policy reload failed, keeping the previous policy: "
                                    "mode: must be one of enforce, discover, got 'sometimes'"),
    (policy_text(listen={"host": "0.0.0.0", "port": 9999}), "policy reload failed, keeping the previous policy: "
                                                           "listen, dns and transparent cannot change on reload; "
                                                           "restart the proxy"),
    (policy_text(transparent={"ports": [{"port": 443, "listen": 15001}], "dns_address": "198.18.0.1"}),
     "policy reload failed, keeping the previous policy: listen, dns and transparent cannot change on reload; "
     "restart the proxy"),
])
def test_sighup_with_broken_policy_keeps_the_old_one(tmp_path, capsys, new_text, message):
    launcher = make_launcher(tmp_path, policy_text())
    old_policy, old_sha = launcher.policy, launcher.sha256
    (tmp_path / "policy.json").write_text(new_text)
    asyncio.run(reload_in_loop(launcher))
    assert launcher.runtime.policy is old_policy and launcher.sha256 == old_sha
    assert status(tmp_path) | {"pid": 0} == {"state": "error", "policy_sha256": old_sha, "error": message, "pid": 0}
    out, err = capsys.readouterr()
    assert f"bottle: {message}" in err
    assert json.loads(out)["reason"] == message


def test_sighup_with_the_policy_being_served_changes_nothing_and_logs_nothing(tmp_path, capsys):
    launcher = make_launcher(tmp_path, policy_text())
    policy, sha = launcher.runtime.policy, launcher.sha256
    asyncio.run(reload_in_loop(launcher))
    assert launcher.runtime.policy is policy and launcher.sha256 == sha
    assert status(tmp_path)["state"] == "serving" and status(tmp_path)["policy_sha256"] == sha
    assert capsys.readouterr().out == ""  # no policy_reload line in the request log


def test_sighup_with_valid_policy_swaps_it(tmp_path, capsys):
    launcher = make_launcher(tmp_path, policy_text())
    new = policy_text(mode="discover")
    (tmp_path / "policy.json").write_text(new)
    asyncio.run(reload_in_loop(launcher))
    assert launcher.runtime.policy.mode == "discover"
    assert status(tmp_path)["state"] == "serving"
    assert status(tmp_path)["policy_sha256"] == hashlib.sha256(new.encode()).hexdigest()


def test_launcher_drops_sslkeylogfile_before_mitmproxy_reads_it(tmp_path):
    code = ("import os, bottle.mitm.launcher, mitmproxy.net.tls as t; "
            "print(os.environ.get('SSLKEYLOGFILE'), os.environ.get('MITMPROXY_SSLKEYLOGFILE'), t.log_master_secret)")
    env = dict(os.environ, SSLKEYLOGFILE=str(tmp_path / "k"), MITMPROXY_SSLKEYLOGFILE=str(tmp_path / "m"),
               PYTHONPATH=str(Path(launcher_module.__file__).parents[2]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["None", "None", "None"]


# -- receive -----------------------------------------------------------------

def tar_of(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    buf.seek(0)
    return buf


REG = tarfile.REGTYPE


@pytest.mark.parametrize("members, message", [
    ([("mitmproxy-ca.pem", b"k", REG), ("../policy.json", b"{}", REG)], "unexpected tar member '../policy.json'"),
    ([("mitmproxy-ca.pem", b"k", REG), ("sub/policy.json", b"{}", REG)], "unexpected tar member 'sub/policy.json'"),
    ([("mitmproxy-ca.pem", b"k", REG), ("policy.json", b"", tarfile.SYMTYPE)],
     "tar member 'policy.json' is not a regular file"),
    ([("mitmproxy-ca.pem", b"k", REG)], "tar stream lacks policy.json"),
    ([("mitmproxy-ca.pem", b"k", REG), ("mitmproxy-ca.pem", b"k", REG), ("policy.json", b"{}", REG)],
     "tar member 'mitmproxy-ca.pem' appears twice"),
])
def test_receive_rejects_unexpected_tar_content(members, message):
    with pytest.raises(receive.ReceiveError) as e:
        receive.read_members(tar_of(*members))
    assert str(e.value) == message


def test_receive_writes_files_0600_and_waits_for_serving(tmp_path, monkeypatch):
    policy = policy_text().encode()
    stream = tar_of(("./mitmproxy-ca.pem", b"KEY", REG), ("policy.json", policy, REG), ("upstream-ca.pem", b"CA", REG))
    sha = hashlib.sha256(policy).hexdigest()
    (tmp_path / "status.json").write_text(json.dumps({"state": "serving", "policy_sha256": sha, "error": None}))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(stream))
    assert receive.main(["--dir", str(tmp_path), "--timeout", "2"]) == 0
    for path, data in [("mitmproxy/mitmproxy-ca.pem", b"KEY"), ("policy.json", policy), ("upstream-ca.pem", b"CA")]:
        assert (tmp_path / path).read_bytes() == data
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600


def test_receive_reports_the_proxy_error(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"state": "error", "policy_sha256": None, "error": "bad CA"}))
    with pytest.raises(receive.ReceiveError) as e:
        receive.wait_for_status(tmp_path, "abc", 2, since=0)
    assert str(e.value) == "proxy reported an error: bad CA"


def test_receive_times_out(tmp_path):
    with pytest.raises(receive.ReceiveError) as e:
        receive.wait_for_status(tmp_path, "abcdef0123456789", 0.2, since=0)
    assert str(e.value) == "proxy did not report serving policy sha256 abcdef012345 within 0.2s"


def test_receive_signals_a_running_launcher(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(receive.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    (tmp_path / "launcher.pid").write_text("4242\n")
    assert receive.signal_launcher(tmp_path) is True
    assert sent == [(4242, receive.signal.SIGHUP)]
    assert receive.signal_launcher(tmp_path / "nowhere") is False


def test_receive_reaches_an_address_that_refuses_and_not_one_that_drops(tmp_path, monkeypatch, capsys):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused_port = free.getsockname()[1]
    receive.check_reach("127.0.0.1", 2, port=refused_port)  # refused: packets pass
    # A listener with a full accept queue drops the SYN: to the sender, that is a host
    # dropping packets.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=2)
        try:
            with pytest.raises(TimeoutError):
                receive.check_reach("127.0.0.1", 0.3, port=port)
            monkeypatch.setattr(receive, "check_reach", functools.partial(receive.check_reach, port=port))
            assert receive.main(["--dir", str(tmp_path), "--reach", "127.0.0.1", "--reach-timeout", "0.3"]) == 3
        finally:
            queued.close()
    assert capsys.readouterr().err == "TimeoutError: timed out\n"
    assert not (tmp_path / "policy.json").exists()


def test_receive_can_check_reach_alone(tmp_path, monkeypatch):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused_port = free.getsockname()[1]
    monkeypatch.setattr(receive, "check_reach", functools.partial(receive.check_reach, port=refused_port))
    # The argv the Docker backend runs before a transparent capture (nothing on stdin).
    assert receive.main(["--dir", str(tmp_path), "--reach-only", "--reach", "127.0.0.1", "--reach-timeout", "2"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_the_launcher_wakes_every_waiting_receiver_when_it_writes_its_status(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(launcher_module.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    (tmp_path / receive.WAITING_DIR).mkdir()
    for name in ("4242", "4343", "not-a-pid"):
        (tmp_path / receive.WAITING_DIR / name).touch()
    launcher_module.write_status(tmp_path / "status.json", "serving", "abc", None)
    assert sorted(sent) == [(4242, signal.SIGUSR1), (4343, signal.SIGUSR1)]
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "serving"


def test_a_wake_up_signal_is_held_for_the_waiter_and_dropped_afterwards():
    # In a process of its own, single-threaded like bottle.mitm.receive: a process-directed
    # signal goes to any thread that does not block it, so in pytest's process another
    # thread could take it.
    script = textwrap.dedent("""
        import os, signal
        from bottle.mitm import receive
        with receive.woken_by(signal.SIGUSR1):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)
            info = signal.sigtimedwait({signal.SIGUSR1}, 5)
            print("woken", info.si_signo == signal.SIGUSR1)
        # A second one was still pending; leaving dropped it instead of delivering it.
        print("after", signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, signal.SIGUSR1 in signal.sigpending())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "woken True\nafter True False\n"), done.stderr


def test_receive_registers_as_a_waiter_only_while_it_waits(tmp_path, monkeypatch):
    policy = policy_text().encode()
    sha = hashlib.sha256(policy).hexdigest()
    seen = []

    def serve(root, sha256, timeout, since):
        seen.append(sorted(p.name for p in (root / receive.WAITING_DIR).iterdir()))
        launcher_module.write_status(root / "status.json", "serving", sha256, None)

    monkeypatch.setattr(receive, "wait_for_status", serve)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(tar_of(("mitmproxy-ca.pem", b"K", REG), ("policy.json", policy, REG))))
    assert receive.main(["--dir", str(tmp_path), "--timeout", "2"]) == 0
    assert seen == [[str(os.getpid())]]
    assert list((tmp_path / receive.WAITING_DIR).iterdir()) == []
    assert json.loads((tmp_path / "status.json").read_text())["policy_sha256"] == sha
