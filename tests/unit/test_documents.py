"""Every decoder of a stored document turns any input into a value or a CorruptDocument with a
short message: never RecursionError, ValueError, OverflowError or a megabyte of error text.

Hypothesis feeds each decoder arbitrary bytes and arbitrary JSON (also as the value of each field
our documents have); the cases the review found are named tests of their own.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebootcoord.adapters.etcd import EtcdGroupStore, _decode_waiter, _Kv
from rebootcoord.adapters.kube.lease import ANN_LEDGER, ANN_PAUSED, ANN_RECORDS, ANN_SLOTS, LeaseGroupStore
from rebootcoord.core.documents import MAX_DEPTH, load_json
from rebootcoord.core.group import GroupState
from rebootcoord.core.semaphore import HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import CorruptDocument

#: The longest message one corrupt document may produce.
MESSAGE_LIMIT = 600

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
RECORD_FIELDS = json.loads(
    HolderRecord(HolderId("n1"), NodeName("n1"), Group("default"), Phase.DRAINING, "b", 1.0, 2.0).encode()
)

BAD_INPUTS = {
    "100,000-deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting in an object": b'{"total_slots": 1, "holders": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "an integer of 5,000 digits": b'{"total_slots": ' + b"9" * 5000 + b', "holders": []}',
    "a float overflowing": b'{"total_slots": 1e999, "holders": []}',
    "NaN": b'{"total_slots": NaN, "holders": []}',
    "not UTF-8": b"\xff\xfe{}",
    "a lone surrogate": b'{"holders": ["\\ud800"], "total_slots": 1}',
    "empty": b"",
    "100,000 holders above the max": json.dumps(
        {"total_slots": 1, "holders": [f"h{i}" for i in range(100_000)]}
    ).encode(),
}


def _short(exc: CorruptDocument) -> None:
    assert len(str(exc)) <= MESSAGE_LIMIT, f"{len(str(exc))} characters"


def _decoders() -> dict[str, Any]:
    etcd = EtcdGroupStore(None, prefix="p", group=Group("g"))  # type: ignore[arg-type]
    lease = LeaseGroupStore(None, namespace="ns", group=Group("g"))  # type: ignore[arg-type]

    def etcd_group(raw: bytes) -> GroupState:
        k = etcd.keys
        state, _legacy = etcd._state(
            _Kv(k.slots, raw, 1, 1),
            record_kvs=[_Kv(k.records + "n1", raw, 2, 2)],
            pause_kv=_Kv(k.pause, raw, 3, 3),
            ledger_kv=_Kv(k.ledger, raw, 4, 4),
            members_kv=_Kv(k.members, raw, 5, 5),
            history_kvs=[_Kv(k.history + "0000000000000001-abc", raw, 6, 6)],
        )
        return state

    def lease_group(raw: bytes) -> GroupState:
        text = raw.decode("utf-8", "replace")
        annotations = {ANN_SLOTS: text, ANN_RECORDS: text, ANN_PAUSED: text, ANN_LEDGER: text}
        return lease._decode({"metadata": {"name": "x", "resourceVersion": "", "annotations": annotations}})

    return {
        "semaphore value": lambda raw: SemaphoreState.decode(raw, key="k"),
        "holder record": lambda raw: HolderRecord.decode(raw, key="k"),
        "pause marker": PauseInfo.decode,
        "waiter entry": lambda raw: _decode_waiter(raw, holder="n1", order=1),
        "etcd group (all six keys)": etcd_group,
        "Lease annotations": lease_group,
    }


DECODERS = _decoders()


def _decoded(name: str, raw: bytes) -> object:
    try:
        value = DECODERS[name](raw)
    except CorruptDocument as exc:
        _short(exc)
        return exc
    for problem in getattr(value, "corrupt", ()):
        _short(problem)
    return value


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_inputs_the_review_found_are_reported_not_raised(name: str, case: str) -> None:
    _decoded(name, BAD_INPUTS[case])


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_any_bytes(name: str, raw: bytes) -> None:
    _decoded(name, raw)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json(name: str, doc: object) -> None:
    _decoded(name, json.dumps(doc).encode())


@settings(max_examples=500, deadline=None)
@given(field=st.sampled_from(sorted(RECORD_FIELDS)), value=json_values)
def test_any_value_in_any_field_of_a_record(field: str, value: object) -> None:
    doc = {**RECORD_FIELDS, field: value}
    _decoded("holder record", json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(total=json_values, holders=json_values)
def test_any_slots_document(total: object, holders: object) -> None:
    _decoded("semaphore value", json.dumps({"total_slots": total, "holders": holders}).encode())


def test_the_limits() -> None:
    assert load_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "k") is not None
    with pytest.raises(CorruptDocument, match="levels deep"):
        load_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "k")
    assert load_json(b'["' + b"[" * 40 + b'"]', "k") == ["[" * 40]  # brackets in a string
    with pytest.raises(CorruptDocument, match="5000 digits"):
        load_json(b"9" * 5000, "k")
    assert load_json(b"1796171887", "k") == 1796171887


def test_a_bad_marker_still_pauses_and_a_bad_waiter_keeps_its_place() -> None:
    assert PauseInfo.decode(b"[" * 100_000).reason == "unreadable pause marker (still paused)"
    assert _decode_waiter(b"9" * 5000, holder="n1", order=7) == Waiter(HolderId("n1"), NodeName("n1"), 0.0, 7)
