"""One exception family for everything bottle reports to a user.

Each family has its own exit code so scripts can tell them apart. click keeps 1 (a
generic error) and 2 (usage errors); ours start at 3. When `bottle start` runs an agent,
the agent command's own exit code is returned instead. Nothing here knows click: the
command line (bottle/cli.py) turns these into its `Error: …` lines.
"""

from __future__ import annotations


class BottleError(Exception):
    """An error a user can act on: printed as `Error: <message>` without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, tip: str | None = None) -> None:
        if tip:
            message = f"{message}\nTip: {tip}"
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ManifestError(BottleError):
    """The manifest cannot be read or does not follow the manifest schema."""

    exit_code = 3


class BackendError(BottleError):
    """The container engine or cluster refused or failed a request."""

    exit_code = 4


class StartError(BottleError):
    """A bottle component did not become ready; everything already created is torn down."""

    exit_code = 5


class NotSupportedError(BottleError):
    """The request is valid but this version of bottle cannot do it yet."""

    exit_code = 6


class BuildError(BottleError):
    """An image or a component cannot be built (e.g. unverified source, a failed compile)."""

    exit_code = 7


class LogError(BottleError):
    """An egress log cannot be found or read (a corrupt or truncated line, a newer format)."""

    exit_code = 8


class LiveError(BottleError):
    """A running bottle cannot be found, or cannot take a change while it runs (`bottle reload`)."""

    exit_code = 9
