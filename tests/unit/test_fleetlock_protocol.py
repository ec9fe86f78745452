"""The FleetLock protocol's rules (rebootcoord.core.fleetlock), and Zincati's id."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebootcoord.core.fleetlock import (
    KINDS,
    PRE_REBOOT,
    STEADY_STATE,
    ZINCATI_APP_ID,
    ClientParams,
    Refusal,
    app_specific_id,
    parse_request,
)

HEADERS = {"fleet-lock-protocol": "true"}


def body(**params: object) -> bytes:
    return json.dumps({"client_params": params}).encode()


def test_a_zincati_request_is_parsed() -> None:
    assert parse_request("POST", "/v1/pre-reboot", HEADERS, body(id="ab12", group="default")) == (
        PRE_REBOOT,
        ClientParams("ab12", "default"),  # type: ignore[arg-type]
    )
    # a base URL with a path of its own, a trailing slash, extra fields Zincati may add one day
    operation, _ = parse_request("POST", "/fleet/v1/steady-state/", HEADERS, body(id="a", group="g.1-x", x=1))
    assert operation == STEADY_STATE


def test_every_kind_has_a_4xx_or_5xx_status_and_a_meaning() -> None:
    assert all(400 <= status < 600 and meaning for status, meaning in KINDS.values())
    assert len(KINDS) <= 24  # Zincati labels a metric with it: small cardinality


@pytest.mark.skipif(
    not Path("/etc/machine-id").exists() or shutil.which("systemd-id128") is None,
    reason="needs systemd-id128 and /etc/machine-id",
)
def test_the_app_specific_id_is_systemds() -> None:
    machine = Path("/etc/machine-id").read_text().strip()
    ours = app_specific_id(machine)
    systemd = subprocess.run(
        ["systemd-id128", "machine-id", f"--app-specific={ZINCATI_APP_ID}"], capture_output=True, text=True
    ).stdout.strip()
    assert ours == systemd


def test_the_app_specific_id_of_a_known_machine() -> None:
    # The UUID v4 bits systemd sets; a machine id with or without dashes; not hex is refused.
    found = app_specific_id("0123456789abcdef0123456789abcdef")
    assert len(found) == 32 and found[12] == "4" and found[16] in "89ab"
    assert found == app_specific_id("01234567-89ab-cdef-0123-456789abcdef")
    with pytest.raises(ValueError):
        app_specific_id("not hex")


_text = st.text(max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "HEAD", "PATCH", "post", ""]) | _text,
    path=st.sampled_from(["/v1/pre-reboot", "/v1/steady-state", "/", "/v2/pre-reboot"]) | _text,
    headers=st.dictionaries(st.sampled_from(["fleet-lock-protocol", "content-type", "x"]), _text, max_size=3),
    raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()),
)
def test_any_request_is_parsed_or_refused_with_a_4xx_kind(
    method: str, path: str, headers: dict[str, str], raw: bytes
) -> None:
    try:
        operation, client = parse_request(method, path, headers, raw)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500
        assert refusal.kind in KINDS and refusal.value
        assert json.loads(refusal.body())["kind"] == refusal.kind
        return
    assert method == "POST" and headers["fleet-lock-protocol"].strip().lower() == "true"
    assert operation in (PRE_REBOOT, STEADY_STATE) and client.id and client.group


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(st.sampled_from(["id", "group", "x"]), _json, max_size=3))
def test_client_params_of_any_shape_are_parsed_or_refused(params: dict[str, object]) -> None:
    try:
        _, client = parse_request("POST", "/v1/pre-reboot", HEADERS, body(**params))
    except Refusal as refusal:
        assert refusal.kind in ("decode_error", "invalid_client_identity", "invalid_group")
        return
    assert isinstance(params["id"], str) and client.id == params["id"]
