"""JSON Schema of the configuration file (the Helm chart's values.schema.json is generated from it).
Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rebootcoord.core.config.parsers import (
    DETECTOR_TYPES,
    p_address,
    p_argv,
    p_bool,
    p_checks,
    p_client_ids,
    p_detectors,
    p_duration,
    p_endpoints,
    p_grace,
    p_group,
    p_groups,
    p_holder_id,
    p_labels,
    p_namespace,
    p_notify_events,
    p_notify_templates,
    p_notify_urls,
    p_opt_str,
    p_opt_url,
    p_poll_ttl,
    p_positive_duration,
    p_regex,
    p_selector,
    p_signal,
    p_str,
    p_str_list,
    p_waiter_ttl,
    p_waves,
    p_windows_raw,
    p_zone,
)
from rebootcoord.core.config.settings import KEYS, env_name, plain
from rebootcoord.core.notices import EVENTS

_DURATION = {
    "type": ["string", "number"],
    "pattern": r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h|d))+$|^[0-9]+(\.[0-9]*)?$",
    "minimum": 0,
}
_ARGV = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
_EXIT_CODES = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 255}}
_DETECTOR = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": list(DETECTOR_TYPES)},
        "name": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "argv": _ARGV,
        "timeout": _DURATION,
        "reboot_exit_codes": _EXIT_CODES,
        "no_reboot_exit_codes": _EXIT_CODES,
    },
}
_CHECK = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["command", "http"]},
        "name": {"type": "string"},
        "argv": _ARGV,
        "url": {"type": "string", "pattern": "^https?://"},
        "timeout": _DURATION,
        "expect_status": {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}},
    },
}
_WINDOW = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["start", "length"],
            "properties": {"start": {"type": "string"}, "length": _DURATION, "time_zone": {"type": "string"}},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["end"],
            "properties": {
                "days": {"type": ["array", "string"]},
                "start": {"type": "string"},
                "end": {"type": "string"},
                "time_zone": {"type": "string"},
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["start_time", "length_minutes"],
            "properties": {
                "days": {"type": ["array", "string"]},
                "start_time": {"type": "string"},
                "length_minutes": {"type": "integer", "minimum": 1},
                "time_zone": {"type": "string"},
            },
        },
    ]
}
_LABEL_ITEM = {"type": "string", "pattern": "^[^=]+=[^=]*$"}

_SCHEMAS: dict[Callable[[object], Any], dict[str, Any]] = {
    p_str: {"type": "string"},
    p_opt_str: {"type": ["string", "null"]},
    p_bool: {"type": "boolean"},
    p_duration: _DURATION,
    p_positive_duration: _DURATION,
    p_waiter_ttl: _DURATION,
    p_poll_ttl: _DURATION,
    p_str_list: {"type": "array", "items": {"type": "string"}},
    p_argv: _ARGV,
    p_signal: {"type": ["string", "integer"]},
    p_endpoints: {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "pattern": r"^(https?://)?[^/]+:[0-9]+/?$"},
    },
    p_address: {"type": "string", "pattern": r"^([^:]*:[0-9]{1,5})?$"},
    p_group: {"type": "string", "pattern": r"^[a-zA-Z0-9.-]+$"},
    p_waves: {
        "type": ["array", "string", "null"],
        "items": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^[0-9]+%?$"}]},
    },
    p_groups: {
        "type": ["array", "string"],
        "items": {"type": "string", "pattern": r"^[a-zA-Z0-9.-]+$", "maxLength": 63},
    },
    p_client_ids: {
        "type": ["object", "null"],
        "additionalProperties": {"type": ["array", "string"], "items": {"type": "string", "minLength": 1}},
    },
    p_holder_id: {"type": "string", "pattern": r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,252})?$"},
    p_detectors: {
        "type": "array",
        "minItems": 1,
        "items": {"oneOf": [{"enum": list(DETECTOR_TYPES)}, _DETECTOR]},
    },
    p_checks: {"type": ["array", "null"], "items": _CHECK},
    p_windows_raw: {"type": ["array", "null"], "items": _WINDOW},
    p_zone: {"type": "string", "minLength": 1},
    p_selector: {"type": "string"},
    p_labels: {"type": "array", "items": _LABEL_ITEM},
    p_namespace: {"type": "string", "pattern": r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$"},
    p_regex: {"type": "string"},
    p_opt_url: {"type": "string", "pattern": r"^(https?://.+)?$"},
    p_grace: {"type": "integer", "minimum": -1, "maximum": 86400},
    # A list, or from env text several URLs apart by spaces (apprise's list syntax).
    p_notify_urls: {
        "type": ["array", "string", "null"],
        "items": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$"},
    },
    p_notify_events: {"type": ["array", "string"], "items": {"enum": list(EVENTS)}},
    p_notify_templates: {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {event: {"type": "string", "minLength": 1} for event in EVENTS},
    },
}


def schema_of(parse: Callable[[object], Any]) -> dict[str, Any]:
    schema = dict(getattr(parse, "schema", None) or _SCHEMAS[parse])
    return {k: v for k, v in schema.items() if v is not None}


def json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file: every key, its type, its default, its help."""
    properties: dict[str, Any] = {}
    for name, fld in KEYS.items():
        parse = fld.metadata["parse"]
        schema = schema_of(parse)
        schema["description"] = fld.metadata["help"]
        default = fld.default
        if default is not None and not fld.metadata["secret"]:
            schema["default"] = plain(default)
        properties[name] = schema
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "rebootcoord agent configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def describe_keys() -> Sequence[tuple[str, str, str]]:
    """(key, env var, help) for --help texts and the docs."""
    return [(name, env_name(name), str(f.metadata["help"])) for name, f in KEYS.items()]


def structured(key: str) -> bool:
    """Whether the key takes a list or a mapping (from env and flags: YAML flow text)."""
    fld = KEYS[key]
    types = schema_of(fld.metadata["parse"]).get("type", ["array"])  # oneOf: structured
    types = [types] if isinstance(types, str) else types
    return "array" in types or "object" in types
