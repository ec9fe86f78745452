"""Loads the Prometheus fixtures for these tests.

The root ``tests/conftest.py`` is meant to register the plugin for every suite with
``pytest_plugins = [..., "tests.support.prometheus_plugin"]``; until it does, this hook registers it
(under the same name, so never twice: two registrations would start two session servers).
"""

import pytest

PLUGIN = "tests.support.prometheus_plugin"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
