"""The only module that runs the engine's command (`docker` or `podman`).

Every call is an argv list (no shell). A failure raises BackendError showing the
command, its exit code and its stderr, so a user sees exactly what the engine said.
Which client runs is decided in engine.py; driving the CLI rather than an API keeps the
user's contexts and sockets working (docs/prds/0002-docker-cli.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from bottle.errors import BackendError


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()) or "    (nothing)"


class DockerCLI:
    def __init__(self, executable: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        chosen = executable or env.get("BOTTLE_DOCKER") or "docker"
        resolved = shutil.which(chosen)
        if resolved is None:
            raise BackendError(
                f"the engine client {chosen!r} was not found",
                tip="install Docker or Podman, or set BOTTLE_DOCKER to the path of a docker-compatible client",
            )
        self.executable = resolved

    def argv(self, args: Sequence[str]) -> list[str]:
        return [self.executable, *args]

    def run(
        self,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = 300,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.argv(args)
        try:
            result = subprocess.run(
                argv,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                env=dict(env) if env is not None else None,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s") from None
        except OSError as e:
            raise BackendError(f"`{shlex.join(argv)}` could not be run: {e.strerror}") from None
        if check and result.returncode != 0:
            raise BackendError(
                f"`{shlex.join(argv)}` failed with exit code {result.returncode}\n"
                f"  stderr:\n{_indent(result.stderr.decode(errors='replace'))}"
            )
        return result

    def output(self, args: Sequence[str], **kwargs) -> str:
        return self.run(args, **kwargs).stdout.decode(errors="replace").strip()

    def ok(self, args: Sequence[str], **kwargs) -> bool:
        return self.run(args, check=False, **kwargs).returncode == 0
