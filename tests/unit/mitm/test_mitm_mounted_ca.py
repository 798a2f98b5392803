"""A proxy whose CA is mounted (a Kubernetes Secret): the launcher links it into the
confdir, and the policy can then arrive without the CA."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from bottle.mitm import launcher, receive


def tar_of(**files: bytes) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_the_launcher_links_a_mounted_ca_into_its_confdir(tmp_path):
    mounted = tmp_path / "secret" / "mitmproxy-ca.pem"
    mounted.parent.mkdir()
    mounted.write_bytes(b"KEY AND CERT")
    confdir = tmp_path / "run" / "mitmproxy"
    launcher.link_ca(mounted, confdir)
    launcher.link_ca(mounted, confdir)  # a restarted container finds the link already there
    assert (confdir / "mitmproxy-ca.pem").read_bytes() == b"KEY AND CERT"
    assert (confdir / "mitmproxy-ca.pem").readlink() == mounted
    assert confdir.stat().st_mode & 0o777 == 0o700


def test_a_policy_without_the_ca_is_refused_unless_the_proxy_has_one():
    with pytest.raises(receive.ReceiveError) as e:
        receive.read_members(tar_of(**{"policy.json": b"{}"}))
    assert str(e.value) == "tar stream lacks mitmproxy-ca.pem"
    assert receive.read_members(tar_of(**{"policy.json": b"{}"}), ca_present=True) == {"policy.json": b"{}"}


def test_receive_takes_only_the_policy_when_the_ca_is_mounted(tmp_path, monkeypatch):
    mounted = tmp_path / "secret.pem"
    mounted.write_bytes(b"KEY")
    launcher.link_ca(mounted, tmp_path / "mitmproxy")
    policy = b'{"bottle": "b"}'
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "serving", "policy_sha256": hashlib.sha256(policy).hexdigest(), "error": None}))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(tar_of(**{"policy.json": policy})))
    assert receive.main(["--dir", str(tmp_path), "--timeout", "2"]) == 0
    assert (tmp_path / "policy.json").read_bytes() == policy
    assert mounted.read_bytes() == b"KEY"
