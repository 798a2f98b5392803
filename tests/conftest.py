from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Make BLOCKED tests impossible to miss: they did not run, and why."""
    blocked = [
        report for report in terminalreporter.stats.get("skipped", [])
        if "BLOCKED" in str(getattr(report, "longrepr", ""))
    ]
    if blocked:
        reason = str(blocked[0].longrepr[2]) if isinstance(blocked[0].longrepr, tuple) else str(blocked[0].longrepr)
        terminalreporter.section("BLOCKED: these tests did NOT run", sep="#", red=True, bold=True)
        terminalreporter.line(f"{len(blocked)} test(s) need pipelock, which cannot be obtained here.")
        terminalreporter.line(reason)
