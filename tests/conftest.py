"""Under CI=true nothing may be skipped: a test that did not run proves nothing. The
Kubernetes tests run last."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) were skipped; under CI every test must run.",
                            red=True, bold=True)
        session.exitstatus = 1


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(session, config, items):
    """The Kubernetes tests last: scripts/test builds the test node's binaries in the
    background while everything else runs."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/integration/test_bottle_kubernetes.py"))
