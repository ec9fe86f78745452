"""values.schema.json is generated from the agent's own schema and stays in step with it."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from rebootcoord.core.config import KEYS, json_schema
from tests.support.cluster import REPO_ROOT
from tests.support.rbac import CHART

GENERATOR = REPO_ROOT / "hack" / "gen_chart_schema.py"


def _schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def test_committed_schema_and_key_table_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr


def test_config_section_is_the_agents_schema() -> None:
    config = _schema()["properties"]["config"]
    agent = json_schema()
    assert config["properties"] == agent["properties"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(KEYS)
    readme = (CHART / "README.md").read_text()
    assert all(f"| `{key}` |" in readme for key in KEYS)


def test_chart_values_satisfy_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(_schema()).validate(values)


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"max_holders": 0}},
        {"config": {"unknown_key": 1}},
        {"configg": {}},
        {"image": {"repository": ""}},
    ],
    ids=["max-holders", "unknown-config-key", "unknown-value", "empty-repository"],
)
def test_schema_rejects(values: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(values)
