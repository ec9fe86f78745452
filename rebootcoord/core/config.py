"""Configuration: one schema, four layers (flags > env > file > defaults), frozen settings.

Every key is declared once, in ``Settings``'s fields, with its parser and help text. Values from the
environment (``REBOOTCOORD_<KEY>``) and flags arrive as strings and go through the same parsers as
values from the YAML file. ``load_settings`` collects *every* problem before raising one
``ConfigError``, so an operator fixes a broken file in one round. Pure apart from reading tzdata.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import signal
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from typing import Any
from urllib.parse import urlsplit

import yaml

from rebootcoord.core.durations import format_duration, parse_duration
from rebootcoord.core.types import GROUP_RE, HOLDER_ID_RE, Group, HolderId, NodeName
from rebootcoord.core.windows import Schedule, Window, WindowSpecError, parse_window
from rebootcoord.errors import ConfigError, Problem

_log = logging.getLogger(__name__)

ENV_PREFIX = "REBOOTCOORD_"
ENV_CONFIG_FILE = "REBOOTCOORD_CONFIG"
MASK = "********"


class Invalid(ValueError):
    """Raised by a parser: ``expected`` says what the value should have been."""

    def __init__(self, expected: str, key: str | None = None, value: object = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.key = key
        self.value = value


# ----------------------------------------------------------------------------------------------
# Nested specifications


DETECTOR_TYPES = ("sentinel", "command", "rpm-ostree", "update-engine")
DEFAULT_DETECTOR_ARGV = {
    "rpm-ostree": ("rpm-ostree", "status", "--json"),
    "update-engine": ("update_engine_client", "-status"),
}


@dataclass(frozen=True)
class DetectorSpec:
    """How to learn that the host needs a reboot. ``type`` picks the adapter."""

    type: str
    name: str
    path: str = "/run/reboot-required"
    argv: tuple[str, ...] = ()
    timeout: timedelta = timedelta(seconds=30)
    # kured's --reboot-sentinel-command convention: exit 0 means "reboot needed".
    # `needs-restarting -r` wants reboot_exit_codes: [1].
    reboot_exit_codes: frozenset[int] = frozenset({0})
    # None: every other exit code means "no reboot". Otherwise codes outside both sets are errors.
    no_reboot_exit_codes: frozenset[int] | None = None

    def plain(self) -> dict[str, Any]:
        """In the file's own format, so that --print-config output loads back."""
        out: dict[str, Any] = {"type": self.type, "name": self.name}
        if self.type == "sentinel":
            out["path"] = self.path
            return out
        out["argv"] = list(self.argv)
        out["timeout"] = format_duration(self.timeout)
        if self.type == "command":
            out["reboot_exit_codes"] = sorted(self.reboot_exit_codes)
            if self.no_reboot_exit_codes is not None:
                out["no_reboot_exit_codes"] = sorted(self.no_reboot_exit_codes)
        return out


@dataclass(frozen=True)
class CheckSpec:
    """A post-reboot health check: a host command (exit 0 = healthy) or an HTTP GET."""

    type: str
    name: str
    argv: tuple[str, ...] = ()
    url: str = ""
    timeout: timedelta = timedelta(seconds=10)
    expect_status: frozenset[int] = frozenset({200})

    def plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "timeout": format_duration(self.timeout)}
        if self.type == "command":
            out["argv"] = list(self.argv)
        else:
            out["url"] = self.url
            out["expect_status"] = sorted(self.expect_status)
        return out


# ----------------------------------------------------------------------------------------------
# Parsers: (raw value) -> typed value, raising Invalid. Strings come from env and flags.


def _yaml_if_text(value: object) -> object:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise Invalid(f"valid YAML ({exc.__class__.__name__})") from None
    return value


def p_str(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid("a string")
    return str(value)


def p_opt_str(value: object) -> str | None:
    return None if value is None or value == "" else p_str(value)


def p_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "true",
        "1",
        "yes",
        "on",
        "false",
        "0",
        "no",
        "off",
    }:
        return value.lower() in {"true", "1", "yes", "on"}
    raise Invalid("true or false")


def p_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise Invalid("a whole number")
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise Invalid("a whole number") from None
        if not isinstance(value, int):
            raise Invalid("a whole number")
        if minimum is not None and value < minimum:
            raise Invalid(f"a whole number >= {minimum}")
        if maximum is not None and value > maximum:
            raise Invalid(f"a whole number <= {maximum}")
        return value

    parse.schema = {"type": "integer", "minimum": minimum, "maximum": maximum}  # type: ignore[attr-defined]
    return parse


def p_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def p_positive_duration(value: object) -> timedelta:
    result = p_duration(value)
    if result <= timedelta(0):
        raise Invalid("a duration above zero, such as 10s")
    return result


def p_enum(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise Invalid("one of " + ", ".join(choices))
        return value

    parse.schema = {"type": "string", "enum": list(choices)}  # type: ignore[attr-defined]
    return parse


def p_str_list(value: object) -> tuple[str, ...]:
    """A list of strings. From env/flags: YAML flow ("[a, b]") or comma-separated."""
    value = _yaml_if_text(value)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid("a list of strings")
    return tuple(value)


def p_argv(value: object) -> tuple[str, ...]:
    """A command as an argv list: never a shell string, so nothing is split on spaces by accident."""
    value = _yaml_if_text(value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise Invalid('an argv list of non-empty strings, such as ["systemctl", "reboot"]')
    return tuple(value)


def p_exit_codes(value: object) -> frozenset[int]:
    value = _yaml_if_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise Invalid("a non-empty list of exit codes (0-255)")
    parse = p_int(0, 255)
    return frozenset(parse(v) for v in value)


def p_signal(value: object) -> int:
    """A signal number or name; "SIGRTMIN+5" is systemd's "reboot" signal for PID 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip().upper()
        match = re.fullmatch(r"(?:SIG)?RTMIN(?:\+(\d+))?", text)
        if text.isdigit():
            number = int(text)
        elif match:
            number = int(signal.SIGRTMIN) + int(match.group(1) or 0)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            try:
                number = int(signal.Signals[name])
            except KeyError:
                raise Invalid('a signal name or number such as "SIGRTMIN+5" or 15') from None
    else:
        raise Invalid('a signal name or number such as "SIGRTMIN+5" or 15')
    if not 1 <= number <= int(signal.SIGRTMAX):
        raise Invalid(f"a signal number between 1 and {int(signal.SIGRTMAX)}")
    return number


def p_endpoints(value: object) -> tuple[str, ...]:
    endpoints = p_str_list(value)
    for ep in endpoints:
        parts = urlsplit(ep if "://" in ep else "http://" + ep)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise Invalid(f'endpoints such as "http://127.0.0.1:2379" (bad: {ep!r})')
    return endpoints


def p_address(value: object) -> str:
    """host:port to listen on; "" disables."""
    text = p_str(value)
    if text == "":
        return ""
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Invalid('"host:port" such as "0.0.0.0:9727", ":9727", or "" to disable')
    return text


def p_group(value: object) -> Group:
    text = p_str(value)
    if not GROUP_RE.match(text):
        raise Invalid("a group name of letters, digits, '.' and '-' (FleetLock's rule)")
    return Group(text)


def p_holder_id(value: object) -> str:
    text = p_str(value)
    if text and not HOLDER_ID_RE.match(text):
        raise Invalid("an id of letters, digits, '.', '_', ':' and '-' (at most 253)")
    return text


def _mapping(value: object, key: str, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise Invalid(f"a mapping describing {what}", key, value)
    return value


def _only(spec: Mapping[str, object], allowed: set[str], key: str) -> None:
    for unknown in sorted(set(spec) - allowed):
        hint = difflib.get_close_matches(unknown, sorted(allowed), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise Invalid(
            "one of the keys " + ", ".join(sorted(allowed)) + extra,
            f"{key}.{unknown}",
            spec[unknown],
        )


def _sub(parse: Callable[[object], Any], spec: Mapping[str, object], name: str, key: str) -> Any:
    try:
        return parse(spec[name])
    except Invalid as exc:
        raise Invalid(exc.expected, exc.key or f"{key}.{name}", spec[name]) from None


def p_detectors(value: object) -> tuple[DetectorSpec, ...]:
    value = _yaml_if_text(value)
    if isinstance(value, str):  # shorthand: "sentinel,rpm-ostree"
        value = [{"type": t} for t in p_str_list(value)]
    if not isinstance(value, list | tuple) or not value:
        raise Invalid("a non-empty list of detectors, such as [{type: sentinel}]")
    out = []
    for i, item in enumerate(value):
        key = f"detectors[{i}]"
        spec = _mapping({"type": item} if isinstance(item, str) else item, key, "a detector")
        if spec.get("type") not in DETECTOR_TYPES:
            raise Invalid("one of " + ", ".join(DETECTOR_TYPES), f"{key}.type", spec.get("type"))
        dtype = str(spec["type"])
        allowed = {"type", "name", "timeout"}
        allowed |= {"path"} if dtype == "sentinel" else {"argv"}
        if dtype == "command":
            allowed |= {"reboot_exit_codes", "no_reboot_exit_codes"}
        _only(spec, allowed, key)
        kwargs: dict[str, Any] = {"type": dtype, "name": p_str(spec.get("name", dtype))}
        if "timeout" in spec:
            kwargs["timeout"] = _sub(p_positive_duration, spec, "timeout", key)
        if dtype == "sentinel" and "path" in spec:
            path = _sub(p_str, spec, "path", key)
            if not path.startswith("/"):
                raise Invalid("an absolute path (relative to host_root)", f"{key}.path", path)
            kwargs["path"] = path
        if dtype == "command":
            if "argv" not in spec:
                raise Invalid("an argv list (the command to run)", f"{key}.argv", None)
            for name in ("reboot_exit_codes", "no_reboot_exit_codes"):
                if name in spec:
                    kwargs[name] = _sub(p_exit_codes, spec, name, key)
            both = kwargs.get("reboot_exit_codes", frozenset({0})) & (
                kwargs.get("no_reboot_exit_codes") or frozenset()
            )
            if both:
                raise Invalid(
                    "exit codes that are not in both lists",
                    f"{key}.no_reboot_exit_codes",
                    sorted(both),
                )
        if dtype != "sentinel":
            kwargs["argv"] = (
                _sub(p_argv, spec, "argv", key) if "argv" in spec else DEFAULT_DETECTOR_ARGV[dtype]
            )
        out.append(DetectorSpec(**kwargs))
    return tuple(out)


def p_checks(value: object) -> tuple[CheckSpec, ...]:
    value = _yaml_if_text(value)
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise Invalid("a list of checks, such as [{type: http, url: 'http://127.0.0.1:10248/healthz'}]")
    out = []
    for i, item in enumerate(value):
        key = f"health_checks[{i}]"
        spec = _mapping(item, key, "a check")
        ctype = spec.get("type")
        if ctype == "command":
            _only(spec, {"type", "name", "argv", "timeout"}, key)
            if "argv" not in spec:
                raise Invalid("an argv list", f"{key}.argv", None)
            kwargs: dict[str, Any] = {"argv": _sub(p_argv, spec, "argv", key)}
        elif ctype == "http":
            _only(spec, {"type", "name", "url", "timeout", "expect_status"}, key)
            url = spec.get("url")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise Invalid("an http:// or https:// URL", f"{key}.url", url)
            kwargs = {"url": url}
            if "expect_status" in spec:
                codes = _yaml_if_text(spec["expect_status"])
                codes = [codes] if isinstance(codes, int) else codes
                if not isinstance(codes, list) or not codes:
                    raise Invalid(
                        "a list of HTTP status codes", f"{key}.expect_status", spec["expect_status"]
                    )
                kwargs["expect_status"] = frozenset(p_int(100, 599)(c) for c in codes)
        else:
            raise Invalid("command or http", f"{key}.type", ctype)
        if "timeout" in spec:
            kwargs["timeout"] = _sub(p_positive_duration, spec, "timeout", key)
        out.append(CheckSpec(type=str(ctype), name=p_str(spec.get("name", f"{ctype}-{i}")), **kwargs))
    return tuple(out)


def p_windows_raw(value: object) -> tuple[object, ...]:
    """Windows are checked in full once time_zone is known (see _cross_checks)."""
    value = _yaml_if_text(value)
    if value is None:
        return ()
    if isinstance(value, str | Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise Invalid("a list of windows")
    return tuple(value)


def load_zone(name: object, key: str) -> tzinfo:
    """An IANA zone name; "Local" is the host's /etc/localtime."""
    if not isinstance(name, str) or not name:
        raise WindowSpecError(key, name, 'an IANA time zone such as "UTC" or "Europe/Berlin"')
    if name == "Local":
        try:
            with open("/etc/localtime", "rb") as fh:
                return zoneinfo.ZoneInfo.from_file(fh, key="Local")
        except OSError:
            return zoneinfo.ZoneInfo("UTC")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise WindowSpecError(key, name, 'an IANA time zone such as "UTC" or "Europe/Berlin"') from None


def p_zone(value: object) -> str:
    try:
        load_zone(value, "time_zone")
    except WindowSpecError as exc:
        raise Invalid(exc.expected) from None
    return str(value)


_LABEL_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_REQUIREMENT = re.compile(
    rf"^\s*(?:!?{_LABEL_KEY}|{_LABEL_KEY}\s*(?:==?|!=)\s*{_LABEL_VALUE}"
    rf"|{_LABEL_KEY}\s+(?:in|notin)\s+\(\s*{_LABEL_VALUE}(?:\s*,\s*{_LABEL_VALUE})*\s*\))\s*$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def p_selector(value: object) -> str:
    """A Kubernetes label selector ("app=web,tier!=db", "env in (a,b)", "!legacy"); "" = none."""
    text = p_str(value).strip()
    if not text:
        return ""
    # split on commas outside parentheses
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if depth != 0 or not all(_REQUIREMENT.match(part) for part in parts):
        raise Invalid('a label selector such as "app=web,tier!=db" or "env in (a,b)"')
    return text


def p_labels(value: object) -> tuple[tuple[str, str], ...]:
    """Node labels as "key=value" items (kured's --pre-reboot-node-labels)."""
    items = p_str_list(value)
    out = []
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not re.fullmatch(_LABEL_KEY, key) or not re.fullmatch(_LABEL_VALUE, val):
            raise Invalid(f'labels as "key=value" (bad: {item!r})')
        out.append((key, val))
    return tuple(out)


def p_namespace(value: object) -> str:
    text = p_str(value)
    if text and not _DNS_LABEL.match(text):
        raise Invalid("a namespace name (lowercase letters, digits and '-', at most 63)")
    return text


def p_regex(value: object) -> str:
    text = p_str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise Invalid(f"a valid regular expression ({exc})") from None
    return text


def p_opt_url(value: object) -> str:
    text = p_str(value) if value is not None else ""
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise Invalid("an http:// or https:// URL, or empty")
    return text


def p_grace(value: object) -> int:
    """Seconds of termination grace for evicted pods; -1 keeps each pod's own."""
    return p_int(-1, 86400)(value)


# ----------------------------------------------------------------------------------------------
# JSON Schema of the file format (the Helm chart's values.schema.json is generated from it)

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
}


# ----------------------------------------------------------------------------------------------
# The schema


def _key(
    default: Any,
    parse: Callable[[object], Any],
    help: str,
    *,
    secret: bool = False,
) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """The agent's effective configuration. Field metadata is the schema."""

    # identity
    node_name: str = _key("", p_str, "this node's name (default: $NODE_NAME, else the hostname)")
    holder_id: str = _key("", p_holder_id, "id in the semaphore (default: node_name)")
    group: Group = _key(Group("default"), p_group, "the reboot group sharing one budget")
    # semaphore
    backend: str = _key("etcd", p_enum("etcd", "kubernetes"), "semaphore backend")
    max_holders: int = _key(1, p_int(1, 10_000), "slots of the group, used when the semaphore is created")
    etcd_endpoints: tuple[str, ...] = _key(("http://127.0.0.1:2379",), p_endpoints, "etcd v3 endpoints")
    etcd_key_prefix: str = _key("com.coreos.airlock", p_str, "key prefix (airlock's by default)")
    etcd_ca_file: str | None = _key(None, p_opt_str, "CA bundle to verify etcd's certificate")
    etcd_cert_file: str | None = _key(None, p_opt_str, "client certificate for etcd")
    etcd_key_file: str | None = _key(None, p_opt_str, "client key for etcd")
    etcd_username: str | None = _key(None, p_opt_str, "etcd user")
    etcd_password: str | None = _key(None, p_opt_str, "etcd password", secret=True)
    etcd_timeout: timedelta = _key(timedelta(seconds=5), p_positive_duration, "timeout of one etcd call")
    waiter_ttl: timedelta = _key(
        timedelta(seconds=30),
        p_positive_duration,
        "a waiter whose agent stops renewing its place in the queue loses it after this",
    )
    # detection
    detectors: tuple[DetectorSpec, ...] = _key(
        (DetectorSpec(type="sentinel", name="sentinel"),),
        p_detectors,
        "how to detect a pending reboot",
    )
    check_interval: timedelta = _key(timedelta(seconds=60), p_positive_duration, "how often detectors run")
    host_root: str = _key("/", p_str, "where the host's file system is mounted")
    boot_id_file: str = _key("/proc/sys/kernel/random/boot_id", p_str, "the host's boot ID")
    host_exec: str = _key(
        "direct", p_enum("direct", "nsenter"), "run host commands directly or in PID 1's namespaces"
    )
    nsenter_argv: tuple[str, ...] = _key(
        ("nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"),
        p_argv,
        "prefix for host commands when host_exec is nsenter",
    )
    # windows
    windows: tuple[object, ...] = _key((), p_windows_raw, "maintenance windows; none means always")
    time_zone: str = _key("UTC", p_zone, "IANA zone of windows without their own")
    # reboot
    reboot_method: str = _key("command", p_enum("command", "signal"), "how to reboot")
    reboot_command: tuple[str, ...] = _key(("systemctl", "reboot"), p_argv, "argv of the reboot command")
    reboot_signal: int = _key(int(signal.SIGRTMIN) + 5, p_signal, "signal sent to PID 1 by the signal method")
    reboot_signal_relay: str | None = _key(
        None,
        p_opt_str,
        "signal method: ask the relay on this Unix socket to send the signal (rebootcoord signal-relay)",
    )
    reboot_timeout: timedelta = _key(
        timedelta(minutes=10),
        p_positive_duration,
        "when the boot ID has not changed by then, the reboot is retried",
    )
    # after the reboot
    health_checks: tuple[CheckSpec, ...] = _key((), p_checks, "post-reboot checks (command or http)")
    verify_interval: timedelta = _key(
        timedelta(seconds=30), p_positive_duration, "retry period of failing checks"
    )
    release_delay: timedelta = _key(timedelta(0), p_duration, "hold the slot this long after the checks pass")
    # Kubernetes: where the cluster is
    kubeconfig: str | None = _key(
        None, p_opt_str, "kubeconfig file (default: in-cluster, else ~/.kube/config)"
    )
    kube_context: str | None = _key(None, p_opt_str, "kubeconfig context")
    namespace: str = _key(
        "", p_namespace, "namespace of the Leases and events (default: the pod's, else default)"
    )
    lease_ttl: timedelta = _key(
        timedelta(0), p_duration, "Lease backend: reclaim a slot held longer than this (0: never)"
    )
    # Kubernetes: the node
    node_ops: str = _key(
        "auto",
        p_enum("auto", "kubernetes", "none"),
        "cordon and drain through Kubernetes (auto: with that backend)",
    )
    boot_id_source: str = _key(
        "file", p_enum("file", "node"), "boot ID from boot_id_file or the Node's nodeInfo"
    )
    drain_timeout: timedelta = _key(timedelta(minutes=15), p_positive_duration, "give up draining after this")
    drain_grace_period: int = _key(
        -1, p_grace, "termination grace of evicted pods in seconds; -1: the pod's own"
    )
    drain_pod_selector: str = _key("", p_selector, "evict only pods matching this label selector")
    drain_delete_emptydir_data: bool = _key(False, p_bool, "evict pods with emptyDir volumes (kubectl drain)")
    drain_force: bool = _key(False, p_bool, "evict pods no controller manages (kubectl drain --force)")
    drain_parallelism: int = _key(5, p_int(1, 100), "evictions in flight at once")
    drain_failure: str = _key(
        "abort", p_enum("abort", "force"), "on drain failure: abort (uncordon, release) or reboot anyway"
    )
    pre_reboot_labels: tuple[tuple[str, str], ...] = _key(
        (), p_labels, 'node labels set before the drain ("k=v")'
    )
    post_reboot_labels: tuple[tuple[str, str], ...] = _key(
        (), p_labels, 'node labels set after the reboot ("k=v")'
    )
    taint_while_waiting: bool = _key(False, p_bool, "PreferNoSchedule taint while waiting for a slot")
    # Kubernetes: gates
    blocking_pod_selector: str = _key("", p_selector, "pods on this node matching it block the reboot")
    prometheus_url: str = _key("", p_opt_url, "Prometheus whose firing alerts block the reboot")
    prometheus_alert_filter: str = _key("", p_regex, "alerts whose name matches are ignored")
    prometheus_alert_filter_match_only: bool = _key(
        False, p_bool, "invert: only alerts whose name matches prometheus_alert_filter block"
    )
    max_unavailable_nodes: int = _key(
        -1,
        p_int(-1, 100_000),
        "take no slot while more nodes of the group are NotReady or cordoned (-1: off)",
    )
    group_node_selector: str = _key("", p_selector, "label selector of the group's nodes (budget gate)")
    verify_node_ready: bool = _key(True, p_bool, "after the reboot, the Node must be Ready (Kubernetes)")
    verify_pods_ready: bool = _key(False, p_bool, "after the reboot, the pods on the node must be Ready")
    # observability
    metrics_address: str = _key("0.0.0.0:9727", p_address, 'metrics and /healthz listener; "" disables')
    log_format: str = _key("text", p_enum("text", "json"), "log line format")
    log_level: str = _key("info", p_enum("debug", "info", "warning", "error"), "log level")
    events_file: str | None = _key(None, p_opt_str, "append one JSON line per phase change here")

    # derived, filled by load_settings
    schedule: Schedule = field(default=Schedule(), metadata={"derived": True})

    @property
    def holder(self) -> HolderId:
        return HolderId(self.holder_id or self.node_name)

    @property
    def node(self) -> NodeName:
        return NodeName(self.node_name)


KEYS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(Settings) if not f.metadata.get("derived")
}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


# ----------------------------------------------------------------------------------------------
# Loading


def load_settings(
    *,
    file_data: object = None,
    file_name: str = "",
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    fallbacks: Mapping[str, object] | None = None,
) -> Settings:
    """Merge the layers and validate. Raises ConfigError listing every problem.

    ``fallbacks`` are defaults that depend on the host (node_name from $NODE_NAME or the hostname);
    the caller computes them so that this function stays pure.
    """
    env = env if env is not None else {}
    flags = flags or {}
    problems: list[Problem] = []
    raw: dict[str, tuple[object, str]] = {}

    if file_data is not None:
        if not isinstance(file_data, Mapping):
            problems.append(
                Problem("(config file)", type(file_data).__name__, "a YAML mapping of keys", file_name)
            )
        else:
            for k, v in file_data.items():
                if k not in KEYS:
                    problems.append(_unknown(str(k), v, f"file {file_name}"))
                else:
                    raw[k] = (v, f"file {file_name}")
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        k = name[len(ENV_PREFIX) :].lower()
        if k not in KEYS and is_service_link(name, value):
            # A Service named rebootcoord(-...) in the pod's namespace: the kubelet's docker-link
            # variables share our prefix. They are never configuration.
            _log.debug("ignoring the Kubernetes service-link variable %s", name)
            continue
        if k not in KEYS:
            problems.append(_unknown(k, value, f"env {name}"))
        else:
            raw[k] = (value, f"env {name}")
    for k, v in flags.items():
        if v is not None:
            raw[k] = (v, f"flag {flag_name(k)}")

    values: dict[str, Any] = {}
    for name, fld in KEYS.items():
        if name in raw:
            given, source = raw[name]
            try:
                values[name] = fld.metadata["parse"](given)
            except Invalid as exc:
                problems.append(
                    Problem(exc.key or name, exc.value if exc.key else given, exc.expected, source)
                )
        elif fallbacks and name in fallbacks:
            values[name] = fallbacks[name]
    if problems:
        raise ConfigError(problems)
    settings = Settings(**values)
    settings, more = _cross_checks(settings, {k: s for k, (_, s) in raw.items()})
    if more:
        raise ConfigError(more)
    return settings


# The variables the kubelet injects for each Service of the pod's namespace (enableServiceLinks),
# NAME being the Service name upper-cased with '-' as '_'. A name alone could be a misspelled key
# (REBOOTCOORD_METRICS_PORT): the value must have the shape the kubelet gives it, too.
_IP = r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)"
_PROTO = r"(?:TCP|UDP|SCTP)"
_SERVICE_LINKS = (
    (re.compile(r"^[A-Z0-9_]+_SERVICE_HOST$"), re.compile(rf"^{_IP}$")),
    (re.compile(r"^[A-Z0-9_]+_SERVICE_PORT(?:_[A-Z0-9_]+)?$"), re.compile(r"^[0-9]{1,5}$")),
    (re.compile(r"^[A-Z0-9_]+_PORT$"), re.compile(rf"^(?:tcp|udp|sctp)://\[?{_IP}\]?:[0-9]{{1,5}}$")),
    (
        re.compile(rf"^[A-Z0-9_]+_PORT_[0-9]{{1,5}}_{_PROTO}$"),
        re.compile(rf"^(?:tcp|udp|sctp)://\[?{_IP}\]?:[0-9]{{1,5}}$"),
    ),
    (re.compile(rf"^[A-Z0-9_]+_PORT_[0-9]{{1,5}}_{_PROTO}_PROTO$"), re.compile(r"^(?:tcp|udp|sctp)$")),
    (re.compile(rf"^[A-Z0-9_]+_PORT_[0-9]{{1,5}}_{_PROTO}_PORT$"), re.compile(r"^[0-9]{1,5}$")),
    (re.compile(rf"^[A-Z0-9_]+_PORT_[0-9]{{1,5}}_{_PROTO}_ADDR$"), re.compile(rf"^{_IP}$")),
)


def is_service_link(name: str, value: str) -> bool:
    """Whether an environment variable is one the kubelet injects for a Service (name and value)."""
    return any(n.match(name) and v.match(value) for n, v in _SERVICE_LINKS)


def _unknown(key: str, value: object, source: str) -> Problem:
    hint = difflib.get_close_matches(key, list(KEYS), n=1)
    expected = f"a known key (did you mean {hint[0]!r}?)" if hint else "a known key (see --help)"
    return Problem(key, value, expected, source)


def _cross_checks(s: Settings, sources: Mapping[str, str]) -> tuple[Settings, list[Problem]]:
    problems: list[Problem] = []

    def need(ok: bool, key: str, value: object, expected: str) -> None:
        if not ok:
            problems.append(Problem(key, value, expected, sources.get(key, "")))

    need(bool(s.node_name), "node_name", s.node_name, "a node name (set it, or $NODE_NAME)")
    need(
        bool(HOLDER_ID_RE.match(s.holder_id or s.node_name or "x")),
        "node_name",
        s.node_name,
        "a name usable as holder id (letters, digits, '.', '_', ':' and '-'), or set holder_id",
    )
    if s.backend == "etcd":
        need(
            bool(s.etcd_endpoints),
            "etcd_endpoints",
            list(s.etcd_endpoints),
            "at least one endpoint",
        )
        need(
            bool(s.etcd_key_prefix.strip("/")),
            "etcd_key_prefix",
            s.etcd_key_prefix,
            "a non-empty prefix",
        )
    need(
        (s.etcd_cert_file is None) == (s.etcd_key_file is None),
        "etcd_key_file" if s.etcd_cert_file else "etcd_cert_file",
        s.etcd_key_file if s.etcd_cert_file else s.etcd_cert_file,
        "etcd_cert_file and etcd_key_file set together",
    )
    need(
        (s.etcd_username is None) == (s.etcd_password is None),
        "etcd_password" if s.etcd_username else "etcd_username",
        MASK if s.etcd_password else None,
        "etcd_username and etcd_password set together",
    )
    for key in ("etcd_ca_file", "etcd_cert_file", "etcd_key_file"):
        path = getattr(s, key)
        need(path is None or os.path.isfile(path), key, path, "a readable file")
    if s.backend == "kubernetes":
        need(
            bool(re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?", s.group)),
            "group",
            s.group,
            "with backend kubernetes, a lowercase name (it names the Lease): letters, digits, '-' and '.'",
        )
    need(
        not (s.prometheus_alert_filter_match_only and not s.prometheus_alert_filter),
        "prometheus_alert_filter",
        s.prometheus_alert_filter,
        "a regular expression when prometheus_alert_filter_match_only is true (else no alert could block)",
    )
    if s.reboot_method == "command":
        need(
            bool(s.reboot_command),
            "reboot_command",
            list(s.reboot_command),
            "a non-empty argv list",
        )
    need(os.path.isabs(s.host_root), "host_root", s.host_root, "an absolute path")
    need(os.path.isabs(s.boot_id_file), "boot_id_file", s.boot_id_file, "an absolute path")
    if s.host_exec == "nsenter":
        need(bool(s.nsenter_argv), "nsenter_argv", list(s.nsenter_argv), "a non-empty argv list")
    if s.reboot_signal_relay is not None:
        need(
            os.path.isabs(s.reboot_signal_relay),
            "reboot_signal_relay",
            s.reboot_signal_relay,
            "an absolute path of a Unix socket",
        )
        need(
            s.reboot_method == "signal",
            "reboot_signal_relay",
            s.reboot_signal_relay,
            "unset unless reboot_method is signal",
        )

    windows: list[Window] = []
    try:
        zone = load_zone(s.time_zone, "time_zone")
        for i, spec in enumerate(s.windows):
            try:
                windows.append(parse_window(spec, zone, f"windows[{i}]", load_zone))
            except WindowSpecError as exc:
                problems.append(Problem(exc.key, exc.value, exc.expected, sources.get("windows", "")))
    except WindowSpecError as exc:
        problems.append(Problem(exc.key, exc.value, exc.expected, sources.get("time_zone", "")))
    return dataclasses.replace(s, schedule=Schedule(tuple(windows))), problems


# ----------------------------------------------------------------------------------------------
# Rendering


def to_plain(settings: Settings, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The effective configuration as plain YAML-able data, secrets masked."""
    out: dict[str, Any] = {}
    for name, fld in KEYS.items():
        value = getattr(settings, name)
        if fld.metadata["secret"] and value is not None and mask_secrets:
            out[name] = MASK
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, DetectorSpec | CheckSpec):
        return value.plain()
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in value)
    ):
        return [f"{k}={v}" for k, v in value]  # labels
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file: every key, its type, its default, its help."""
    properties: dict[str, Any] = {}
    for name, fld in KEYS.items():
        parse = fld.metadata["parse"]
        schema = dict(getattr(parse, "schema", None) or _SCHEMAS[parse])
        schema = {k: v for k, v in schema.items() if v is not None}
        schema["description"] = fld.metadata["help"]
        default = fld.default
        if default is not None and not fld.metadata["secret"]:
            schema["default"] = _plain(default)
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
