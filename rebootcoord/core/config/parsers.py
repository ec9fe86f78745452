"""The configuration's parsers: a raw value (from the file, or text from env and flags, decoded
by the loader) -> a typed value, or ``Invalid`` saying what was expected. Pure."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import signal
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from typing import Any
from urllib.parse import urlsplit

from rebootcoord.core.bounds import MAX_GROUP_BYTES, MAX_ID_BYTES, utf8_len
from rebootcoord.core.documents import quoted
from rebootcoord.core.durations import format_duration, parse_duration
from rebootcoord.core.notices import EVENTS, TemplateError, Templates, check_template
from rebootcoord.core.rollout import WaveSize
from rebootcoord.core.types import GROUP_RE, HOLDER_ID_RE, Group
from rebootcoord.core.windows import WindowSpecError


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


def p_str(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid("a string")
    if isinstance(value, int) and value.bit_length() > 64:
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
            text = value.strip()
            if len(text.lstrip("+-")) > 18:
                raise Invalid(_bounded(minimum, maximum))
            try:
                value = int(text, 10)
            except ValueError:
                raise Invalid("a whole number") from None
        if not isinstance(value, int):
            raise Invalid("a whole number")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise Invalid(_bounded(minimum, maximum))
        return value

    parse.schema = {"type": "integer", "minimum": minimum, "maximum": maximum}  # type: ignore[attr-defined]
    return parse


def _bounded(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"a whole number from {minimum} to {maximum}"
    if minimum is not None:
        return f"a whole number >= {minimum}"
    return f"a whole number <= {maximum}" if maximum is not None else "a whole number"


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


WAITER_TTL_MIN = timedelta(seconds=5)
WAITER_TTL_MAX = timedelta(hours=1)


def p_waiter_ttl(value: object) -> timedelta:
    """A waiter's place lives this long without a sign of life: whole seconds (etcd leases and
    Lease durations are), from 5 s (a renewal every third of it must fit between two beats of a
    loaded API server) to 1 h (a dead waiter must not block its line for longer)."""
    result = p_duration(value)
    if not WAITER_TTL_MIN <= result <= WAITER_TTL_MAX or result.microseconds:
        raise Invalid("a whole number of seconds from 5s to 1h, such as 30s")
    return result


POLL_TTL_MIN = timedelta(seconds=10)
POLL_TTL_MAX = timedelta(hours=6)


def p_poll_ttl(value: object) -> timedelta:
    """A polling client's place in line (FleetLock: Zincati asks again every ~5 minutes): whole
    seconds from 10 s to 6 h -- a few poll intervals, so that one slow poll does not lose it."""
    result = p_duration(value)
    if not POLL_TTL_MIN <= result <= POLL_TTL_MAX or result.microseconds:
        raise Invalid("a whole number of seconds from 10s to 6h, such as 15m")
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
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid("a list of strings")
    return tuple(value)


def p_argv(value: object) -> tuple[str, ...]:
    """A command as an argv list: never a shell string, so nothing is split on spaces by accident."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise Invalid('an argv list of non-empty strings, such as ["systemctl", "reboot"]')
    program = value[0] if value else ""
    if "/" in program and not program.startswith("/"):
        # Run on the host (nsenter) or from wherever the agent was started: a relative path
        # names a different file, or none, depending on the working directory.
        raise Invalid(
            f"a command name found on PATH or an absolute path first, not the relative path {program!r}"
        )
    return tuple(value)


def p_exit_codes(value: object) -> frozenset[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise Invalid("a non-empty list of exit codes (0-255)")
    parse = p_int(0, 255)
    return frozenset(parse(v) for v in value)


def p_signal(value: object) -> int:
    """A signal that asks PID 1 for a reboot (REBOOT_SIGNALS), by number or name; "SIGRTMIN+5"
    is systemd's "reboot"."""
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
    if number not in REBOOT_SIGNALS:
        names = ", ".join(REBOOT_SIGNALS.values())
        raise Invalid(f"a signal that asks PID 1 for a reboot: one of {names}")
    return number


def signal_name(number: int) -> str:
    """A reboot signal as it is written in a configuration ("SIGRTMIN+5"): p_signal reads it back."""
    rtmin = int(signal.SIGRTMIN)
    if rtmin <= number <= int(signal.SIGRTMAX):
        return "SIGRTMIN" if number == rtmin else f"SIGRTMIN+{number - rtmin}"
    return signal.Signals(number).name


#: The signals systemd (and sysvinit for SIGRTMIN+5's place) takes as a reboot request, as
#: systemd(1) lists them; everything else (SIGRTMIN+4 is poweroff, SIGTERM re-executes) is refused.
REBOOT_SIGNALS = {
    int(signal.SIGRTMIN) + 5: "SIGRTMIN+5 (reboot)",
    int(signal.SIGRTMIN) + 6: "SIGRTMIN+6 (kexec)",
    int(signal.SIGRTMIN) + 15: "SIGRTMIN+15 (immediate reboot, services not stopped)",
    int(signal.SIGRTMIN) + 16: "SIGRTMIN+16 (immediate kexec)",
}


def p_endpoints(value: object) -> tuple[str, ...]:
    endpoints = p_str_list(value)
    for ep in endpoints:
        parts = urlsplit(ep if "://" in ep else "http://" + ep)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise Invalid(f'endpoints such as "http://127.0.0.1:2379" (bad: {quoted(ep)})')
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


def p_groups(value: object) -> tuple[Group, ...]:
    """Group names, as a list or comma-separated."""
    try:
        names = p_str_list(value)
    except Invalid:
        raise Invalid("a list of group names") from None
    for name in names:
        if not GROUP_RE.match(name) or len(name) > MAX_GROUP_BYTES:
            raise Invalid(
                f"group names of letters, digits, '.' and '-' (FleetLock's rule, at most "
                f"{MAX_GROUP_BYTES}), not {quoted(name)}"
            )
    return tuple(Group(n) for n in names)


#: The most entries of fleetlock_client_ids (certificate names and ids together).
MAX_CLIENT_IDS = 10_000


class ClientIds(Mapping[str, tuple[str, ...]]):
    """fleetlock_client_ids: a frozen mapping (settings are frozen and hashable)."""

    def __init__(self, items: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __repr__(self) -> str:
        return f"ClientIds({self._items!r})"


def p_client_ids(value: object) -> ClientIds:
    """Certificate name (CN, DNS or URI SAN) -> the FleetLock ids it may act as, beyond itself."""
    if value is None:
        return ClientIds()
    if not isinstance(value, Mapping):
        raise Invalid('a mapping of certificate name to ids, such as {"node-1.example.com": [e3b0c4...]}')
    out: dict[str, tuple[str, ...]] = {}
    for name, ids in value.items():
        key = f"fleetlock_client_ids.{name}"
        if not isinstance(name, str) or not name or utf8_len(name) > 1024:
            raise Invalid("certificate names of 1 to 1024 bytes", "fleetlock_client_ids", name)
        try:
            listed = p_str_list(ids)
        except Invalid:
            raise Invalid("a list of FleetLock ids", key, ids) from None
        for client_id in listed:
            if not client_id.strip() or utf8_len(client_id) > MAX_ID_BYTES or not client_id.isprintable():
                raise Invalid(f"FleetLock ids of 1 to {MAX_ID_BYTES} bytes of printable text", key, client_id)
        out[name] = listed
    if sum(1 + len(v) for v in out.values()) > MAX_CLIENT_IDS:
        raise Invalid(f"at most {MAX_CLIENT_IDS} names and ids in all")
    return ClientIds(out)


def p_waves(value: object) -> tuple[WaveSize, ...]:
    """Cumulative wave sizes: counts of nodes or percentages, growing, as a list or
    comma-separated ("1,10%,50%,100%"). Empty: no waves."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    expected = 'a list of growing wave sizes, node counts or percentages, such as [1, "10%", "50%", "100%"]'
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > 20:
        raise Invalid(expected + " (at most 20)")
    sizes: list[WaveSize] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise Invalid(expected)
        try:
            sizes.append(WaveSize.parse(str(item)))
        except ValueError:
            raise Invalid(f"{expected}; {quoted(item)} is neither a count (1 or more) nor 1%-100%") from None
    for a, b in itertools.pairwise(sizes):
        if a.percent == b.percent and b.value <= a.value:
            raise Invalid(f"{expected}; {a} then {b} does not grow")
    if sizes and sizes[-1] != WaveSize(100, percent=True):
        raise Invalid(f'{expected}; the last wave must be "100%" (every node of the rollout)')
    return tuple(sizes)


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
                codes = spec["expect_status"]
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
    if len(name) > 255:
        raise WindowSpecError(key, name, 'an IANA time zone such as "UTC" or "Europe/Berlin"')
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", a directory
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
            raise Invalid(f'labels as "key=value" (bad: {quoted(item)})')
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
# Notifications (rebootcoord.core.notices; sent through apprise by rebootcoord.adapters.notify)

_APPRISE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")
# From env and flags: URLs apart by spaces or by commas before the next scheme, as apprise's own
# list syntax, so that a comma inside a URL (mailto://...?to=a@x,b@x) stays in it.
_URL_SPLIT = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def p_notify_urls(value: object) -> tuple[str, ...]:
    """apprise URLs (json://host/path, slack://..., mailto://...). Only the form is checked here;
    whether apprise knows the service is asked when the notifier is built. A URL's value is never
    echoed: most carry a token or a password."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in _URL_SPLIT.split(value.strip()) if v]
    if not isinstance(value, list | tuple):
        raise Invalid("a list of apprise URLs, such as [json://hooks.example.com/reboots]")
    for i, url in enumerate(value):
        if not isinstance(url, str) or not _APPRISE_URL.match(url):
            raise Invalid(
                "an apprise URL (service://..., such as json://host/path or slack://tokens; no spaces)",
                f"notify_urls[{i}]",
                url,
            )
    return tuple(value)


def p_notify_events(value: object) -> tuple[str, ...]:
    """Events to notify, as a list or comma-separated; kept in cycle order, each once."""
    names = p_str_list(value) if isinstance(value, str | list | tuple) else None
    if names is None:
        raise Invalid("a list of events among " + ", ".join(EVENTS))
    for name in names:
        if name not in EVENTS:
            hint = difflib.get_close_matches(name, EVENTS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise Invalid(f"events among {', '.join(EVENTS)}{extra}, not {quoted(name)}")
    return tuple(e for e in EVENTS if e in names)


def p_notify_templates(value: object) -> Templates:
    """Message templates by event, over the defaults (events left out keep theirs)."""
    if value is None:
        return Templates()
    if not isinstance(value, Mapping):
        raise Invalid('a mapping of event to template, such as {done: "{node} is back"}')
    _only(value, set(EVENTS), "notify_templates")
    for event, template in value.items():
        key = f"notify_templates.{event}"
        if not isinstance(template, str):
            raise Invalid("a template text", key, template)
        try:
            check_template(template)
        except TemplateError as exc:
            raise Invalid(str(exc), key, template) from None
    return dataclasses.replace(Templates(), **{str(k): v for k, v in value.items()})
