"""`bottle build` for real on Podman (Buildah): the build-time CA is passed as a secret and
found nowhere in the image it built. (On Docker, scripts/test runs the same `bottle build
--ca-cert` with BuildKit for every run; this check costs a 40 s uncached build per engine,
so CI runs it where the build path is new.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Engine, bottle_env
from tests.support.certs import make_upstream_pki
from tests.support.prereq import missing

pytestmark = pytest.mark.integration

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.parametrize("engine", ["podman"], indirect=True)
def test_the_build_ca_never_lands_in_the_image(engine: Engine, tmp_path):
    base = os.environ.get("BOTTLE_BASE_PYTHON")
    if not base or engine("image", "inspect", base, check=False).returncode != 0:
        missing(f"the python base image ({base or 'BOTTLE_BASE_PYTHON unset'}) is not in {engine.name}'s store "
                "(scripts/test puts it there)")
    # The host's roots (so the build reaches the package index from here) plus a CA made
    # for this test alone: its bytes can only be in the image if the secret leaked.
    ca = make_upstream_pki(tmp_path / "pki", ["build-ca.test"])["ca"].read_text()
    bundle = tmp_path / "build-ca.pem"
    bundle.write_text((HOST_BUNDLE.read_text() if HOST_BUNDLE.is_file() else "") + ca)
    marker = ca.splitlines()[1].encode()  # a line of the certificate's base64 body
    tag = f"bottle-test/proxy-build:{uuid.uuid4().hex[:8]}"
    try:
        # --no-cache: a cached RUN step would not use the secret at all.
        result = subprocess.run(
            [sys.executable, "-m", "bottle", "build", "--only", "proxy", "--no-cache", "--ca-cert", str(bundle),
             "--base-image", f"python={base}"],
            env=bottle_env({**engine.env, "BOTTLE_PROXY_IMAGE": tag}), capture_output=True, cwd=REPO, timeout=600,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        assert f"bottle: built {tag}" in result.stderr.decode()
        archive = tmp_path / "image.tar"
        engine("save", "--output", str(archive), tag, timeout=300)
        data = archive.read_bytes()
        # The scan sees file contents (uncompressed layers): bottle's own code is there.
        assert (REPO / "bottle" / "mitm" / "launcher.py").read_bytes()[:400] in data
        assert marker not in data
    finally:
        engine("rmi", "--force", tag, check=False)
