"""The docs test's closing line: how many documented commands it ran, checked and parsed."""

from __future__ import annotations

import pytest

from tests.docs.mdblocks import DOCS_COUNTS, summary_line


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if DOCS_COUNTS in config.stash:
        terminalreporter.write_line(summary_line(config.stash[DOCS_COUNTS]))
