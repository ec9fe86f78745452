"""Stored documents read safely: whatever bytes a key holds become a value or a CorruptDocument.

Anyone with write access to the backend (an operator's typo, a broken tool, an attacker holding
an agent's credentials) can put anything at a key every agent of the group reads. Python's own
``json.loads`` turns some inputs into exceptions no caller expects (RecursionError at deep
nesting, ValueError for integers over 4,300 digits) and others into huge values. So every
document is checked before it is parsed -- its size, then its nesting depth, in one linear pass
-- and parsed with integers, floats and constants bounded. Messages about it are bounded too:
a 100,000-holder document gives one short line, not a megabyte.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from rebootcoord.errors import CorruptDocument, clipped, safe_repr

#: The largest document read (bytes). A group of 10,000 holders with records fits a few MB;
#: etcd refuses values over 1.5 MiB by default and a Lease's annotations total 256 KiB.
MAX_BYTES = 4 * 1024 * 1024
#: Deepest nesting of arrays and objects. Our documents nest three levels.
MAX_DEPTH = 32
#: Longest integer literal (digits). Timestamps and counters need under 20.
MAX_INT_DIGITS = 30
#: Longest text of a value quoted in a message.
MAX_QUOTED = 120


def load_json(raw: bytes | str, key: str) -> Any:
    """The JSON value stored at ``key``, or CorruptDocument with a bounded message."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_BYTES:
        raise CorruptDocument(key, f"{len(raw)} bytes, more than the {MAX_BYTES} a document may have")
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise CorruptDocument(key, f"nested more than {MAX_DEPTH} levels deep")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except UnicodeDecodeError as exc:
        raise CorruptDocument(key, f"not valid JSON (not UTF-8 at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CorruptDocument(
            key, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except _Refused as exc:
        raise CorruptDocument(key, str(exc)) from None


def load_object(raw: bytes | str, key: str) -> dict[str, Any]:
    """The JSON object stored at ``key``; anything else is a corrupt document."""
    doc = load_json(raw, key)
    if not isinstance(doc, dict):
        raise CorruptDocument(key, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def quoted(value: object) -> str:
    """``repr(value)`` cut to MAX_QUOTED characters (a value from a document, in a message)."""
    return safe_repr(value, MAX_QUOTED)


def described(problems: Sequence[object], most: int = 3) -> str:
    """The first ``most`` problems, joined, and how many more there are."""
    shown = "; ".join(clipped(str(p), 300) for p in problems[:most])
    return shown + (f"; and {len(problems) - most} more" if len(problems) > most else "")


class _Refused(ValueError):
    pass


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 64:
        raise _Refused(f"a number of {len(text)} characters (at most 64)")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"a number out of range ({text[:30]})")
    return value


def _constant(text: str) -> float:
    raise _Refused(f"{text} is not JSON")


def _depth(raw: bytes) -> int:
    """The deepest nesting of [ and { outside strings, without recursion: strings cut out, then
    a running count over the brackets alone (most documents have a handful)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # cannot be deeper than the limit
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
