"""Under CI=true nothing may be skipped: a test that did not run proves nothing."""

from __future__ import annotations

import os


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) were skipped; under CI every test must run.",
                            red=True, bold=True)
        session.exitstatus = 1
