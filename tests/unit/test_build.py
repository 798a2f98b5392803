"""`bottle build`: where the build context comes from, and which BuildKit invocation is used."""

from __future__ import annotations

import sys

import pytest

import bottle
from bottle.backend.docker import build
from bottle.errors import BackendError


def test_a_clone_builds_from_its_own_tree():
    with build.build_context() as context:
        assert (context / "Dockerfile.egress-proxy").is_file()
        assert (context / "bottle" / "mitm" / "launcher.py").is_file()


def test_an_installed_package_builds_from_its_installed_files(tmp_path, monkeypatch):
    site = tmp_path / "site" / "bottle"
    (site / "mitm").mkdir(parents=True)
    (site / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (site / "mitm" / "launcher.py").write_text("# launcher\n")
    shared = tmp_path / "prefix" / "share" / "bottle"
    (shared / "requirements").mkdir(parents=True)
    (shared / "Dockerfile.egress-proxy").write_text("FROM x\n")
    (shared / "Dockerfile.agent").write_text("FROM y\n")
    (shared / "requirements" / "egress-proxy.txt").write_text("mitmproxy==12.2.3\n")
    monkeypatch.setattr(bottle, "__file__", str(site / "__init__.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    with build.build_context() as context:
        assert (context / "Dockerfile.egress-proxy").read_text() == "FROM x\n"
        assert (context / "requirements" / "egress-proxy.txt").is_file()
        assert (context / "bottle" / "mitm" / "launcher.py").read_text() == "# launcher\n"
    assert not context.exists()


class FakeDocker:
    executable = "/usr/bin/docker"

    def __init__(self, buildx: bool, version: str):
        self.buildx, self.version = buildx, version

    def ok(self, args, **kwargs):
        return self.buildx

    def output(self, args, **kwargs):
        return self.version


@pytest.mark.parametrize(
    ("buildx", "version", "expected"),
    [
        (True, "28.2.2", (["buildx", "build", "--load"], {})),
        (False, "20.10.24+dfsg1", (["build"], {"DOCKER_BUILDKIT": "1"})),
    ],
)
def test_buildkit_invocation_matches_the_client(buildx, version, expected):
    assert build.buildkit_command(FakeDocker(buildx, version)) == expected


def test_a_new_client_without_buildx_is_refused_with_a_tip():
    with pytest.raises(BackendError) as info:
        build.buildkit_command(FakeDocker(False, "28.2.2"))
    assert info.value.message == (
        "/usr/bin/docker (client 28.2.2) has no buildx plugin, so it cannot run BuildKit builds\n"
        "Tip: install the docker-buildx plugin, or set BOTTLE_DOCKER to a client with BuildKit "
        "(e.g. /usr/bin/docker from Debian's docker.io package)"
    )


def test_podman_builds_with_buildah_in_docker_format_and_docker_with_plain_progress():
    from bottle.backend.docker.engine import Engine

    podman = Engine(name="podman", version="4.3.1")
    # The docker format keeps HEALTHCHECK, which Buildah's default OCI format drops.
    assert build.build_command(FakeDocker(False, "4.3.1"), podman) == (["build", "--format", "docker"], {})
    assert build.build_command(FakeDocker(False, "20.10.24+dfsg1")) == (
        ["build", "--progress=plain"], {"DOCKER_BUILDKIT": "1"})
