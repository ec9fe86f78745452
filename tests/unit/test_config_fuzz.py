"""No input makes the configuration loader raise anything but ConfigError (exit 2): hypothesis
gives every key arbitrary values (huge and infinite numbers, long text, nesting), from the file,
the environment and flags, and the CLI gets hostile YAML files. Each known bad input of the review
is a named case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebootcoord.cli.common import decode_flow
from rebootcoord.core.config import KEYS, load_settings
from rebootcoord.errors import ConfigError

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=18, max_value=6000).map(lambda digits: 10**digits)  # past int's str limit
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["1e300", ".inf", "99999999999999999999h", "1000000d", "America", "Etc", "A" * 5000,
                       "[" * 200, "mon 01:00 99999999999999999999h", "https://root:hunter2@x", "-1s"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
keys = st.sampled_from(sorted(KEYS)) | st.text(max_size=12)


def _load(file_data: object, env: dict[str, str], flags: dict[str, object]) -> None:
    try:
        load_settings(
            file_data=file_data,
            file_name="agent.yaml",
            env=env,
            flags=flags,
            fallbacks={"node_name": "n1"},
            decode_text=decode_flow,
        )
    except ConfigError as exc:
        text = str(exc)  # printing it must not fail either
        assert len(text) < 2000 * max(1, len(exc.problems))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_data=st.dictionaries(keys, values, max_size=6) | values)
def test_any_file(file_data: object) -> None:
    _load(file_data, {}, {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=st.dictionaries(st.sampled_from(sorted(KEYS)), st.text(max_size=60), max_size=5))
def test_any_environment(env: dict[str, str]) -> None:
    _load({}, {f"REBOOTCOORD_{k.upper()}": v for k, v in env.items()}, {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flags=st.dictionaries(st.sampled_from(sorted(KEYS)), st.text(max_size=60) | values, max_size=5))
def test_any_flags(flags: dict[str, object]) -> None:
    _load({}, {}, flags)


REVIEW = {
    "an integer of 5,000 digits": {"max_holders": 10**5000},
    "a duration of 1e300": {"check_interval": 1e300},
    "an infinite duration": {"check_interval": float("inf")},
    "99999999999999999999h": {"drain_timeout": "99999999999999999999h"},
    "check_interval 1000000d": {"check_interval": "1000000d"},
    "a window of 1e300": {"windows": [{"days": "mon", "start": "01:00", "length": 1e300}]},
    "a zone that is a directory": {"time_zone": "America"},
    "Etc": {"time_zone": "Etc"},
    "a zone of 5,000 characters": {"time_zone": "A" * 5000},
}


@pytest.mark.parametrize("case", sorted(REVIEW))
def test_inputs_the_review_found_are_config_errors(case: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(file_data=REVIEW[case], file_name="f", env={}, flags={}, fallbacks={"node_name": "n1"},
                      decode_text=decode_flow)  # fmt: skip


HOSTILE_FILES = {
    "a 5,000-digit integer": "max_holders: " + "9" * 5000 + "\n",
    "deep nesting": "windows: " + "[" * 5000 + "]" * 5000 + "\n",
    "not UTF-8": b"group: \xff\xfe\n",
    "not YAML": "group: [unclosed\n",
    "a list": "- a\n- b\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_a_hostile_file_exits_2_without_a_traceback(tmp_path: Path, case: str) -> None:
    config = tmp_path / "agent.yaml"
    content = HOSTILE_FILES[case]
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = subprocess.run(
        [sys.executable, "-m", "rebootcoord", "agent", "--config", str(config), "--node-name", "n1",
         "--print-config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "agent.yaml" in done.stderr
    assert len(done.stderr) < 2000
