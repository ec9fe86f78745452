"""Loading: four layers (flags > env > file > defaults) merged, parsed and checked as a whole.

Values from the environment (``REBOOTCOORD_<KEY>``) and flags arrive as text and go through the
same parsers as values from the file; text given for a key that takes a list or a mapping is first
decoded by ``decode_text`` (the CLIs pass a YAML flow decoder, so that core imports nothing
third-party). ``load_settings`` collects *every* problem before raising one ``ConfigError``, so an
operator fixes a broken file in one round. Pure apart from reading tzdata and checking that
certificate files exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from rebootcoord.core.config.parsers import Invalid, load_zone
from rebootcoord.core.config.schema import structured
from rebootcoord.core.config.settings import ENV_CONFIG_FILE, ENV_PREFIX, KEYS, MASK, Settings, flag_name
from rebootcoord.core.types import HOLDER_ID_RE
from rebootcoord.core.windows import Schedule, Window, WindowSpecError, parse_window
from rebootcoord.errors import ConfigError, Problem, mask_urls

_log = logging.getLogger(__name__)


def decode_json(text: str) -> object:
    """The default ``decode_text``: JSON (a subset of the YAML flow the CLIs accept)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Invalid(f"valid JSON ({exc.__class__.__name__})") from None


def load_settings(
    *,
    file_data: object = None,
    file_name: str = "",
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    fallbacks: Mapping[str, object] | None = None,
    decode_text: Callable[[str], object] = decode_json,
) -> Settings:
    """Merge the layers and validate. Raises ConfigError listing every problem.

    ``fallbacks`` are defaults that depend on the host (node_name from $NODE_NAME or the hostname);
    the caller computes them so that this function stays pure. ``decode_text`` turns text such
    as ``[a, b]`` from env and flags into data; it raises ``Invalid`` on bad text.
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
                if isinstance(given, str) and _looks_structured(given):
                    given = decode_text(given) if structured(name) else given
                values[name] = fld.metadata["parse"](given)
            except Invalid as exc:
                problems.append(
                    Problem(exc.key or name, exc.value if exc.key else given, exc.expected, source)
                )
            except (ValueError, TypeError, OverflowError, RecursionError):
                # A parser met a value it did not foresee (the fuzz tests look for these): still
                # the key's problem, never a traceback.
                problems.append(Problem(name, given, f"a valid value of {name} (see --help)", source))
        elif fallbacks and name in fallbacks:
            values[name] = fallbacks[name]
    # The checks across keys run on what parsed (a key that did not keeps its default), so that
    # one run reports every problem; a key with a problem of its own is not blamed again.
    settings = Settings.from_keys(values)
    settings, more = _cross_checks(settings, {k: s for k, (_, s) in raw.items()})
    blamed = {p.key for p in problems}
    problems += [p for p in more if p.key not in blamed]
    if problems:
        raise ConfigError([_masked(p) for p in problems])
    return settings


#: Unknown keys whose name says they hold a secret (etcd_passwd, api_token): their value is
#: never echoed.
_SECRET_NAME = re.compile(r"pass|secret|token|credential|private", re.IGNORECASE)


def _masked(problem: Problem) -> Problem:
    """A problem as it may be printed: a secret's value masked, and the password of any URL."""
    # notify_urls[2] or notify_templates.done: the key's own metadata says whether it is secret
    fld = KEYS.get(re.split(r"[\[.]", problem.key, maxsplit=1)[0])
    secret = fld.metadata["secret"] if fld is not None else bool(_SECRET_NAME.search(problem.key))
    if secret and problem.value is not None:
        return dataclasses.replace(problem, value=MASK)
    return dataclasses.replace(problem, value=mask_urls(problem.value))


def _looks_structured(text: str) -> bool:
    return text.strip()[:1] in ("[", "{")


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

    need(bool(s.identity.node_name), "node_name", s.identity.node_name, "a node name (set it, or $NODE_NAME)")
    need(
        bool(HOLDER_ID_RE.match(s.identity.holder_id or s.identity.node_name or "x")),
        "node_name",
        s.identity.node_name,
        "a name usable as holder id (letters, digits, '.', '_', ':' and '-'), or set holder_id",
    )
    if s.semaphore.backend == "etcd":
        need(
            bool(s.etcd.etcd_endpoints),
            "etcd_endpoints",
            list(s.etcd.etcd_endpoints),
            "at least one endpoint",
        )
        need(
            bool(s.etcd.etcd_key_prefix.strip("/")),
            "etcd_key_prefix",
            s.etcd.etcd_key_prefix,
            "a non-empty prefix",
        )
    need(
        (s.etcd.etcd_cert_file is None) == (s.etcd.etcd_key_file is None),
        "etcd_key_file" if s.etcd.etcd_cert_file else "etcd_cert_file",
        s.etcd.etcd_key_file if s.etcd.etcd_cert_file else s.etcd.etcd_cert_file,
        "etcd_cert_file and etcd_key_file set together",
    )
    need(
        (s.etcd.etcd_username is None) == (s.etcd.etcd_password is None),
        "etcd_password" if s.etcd.etcd_username else "etcd_username",
        MASK if s.etcd.etcd_password else None,
        "etcd_username and etcd_password set together",
    )
    need(
        s.etcd.etcd_password is None
        or s.etcd.etcd_allow_plaintext_password
        or s.semaphore.backend != "etcd"
        or not any(e.lower().startswith("http://") for e in s.etcd.etcd_endpoints),
        "etcd_password",
        MASK,
        "https:// etcd_endpoints: over http:// the password is readable on the wire "
        "(etcd_allow_plaintext_password: true sends it anyway)",
    )
    for key in ("etcd_ca_file", "etcd_cert_file", "etcd_key_file"):
        path = s.value(key)
        need(path is None or os.path.isfile(path), key, path, "a readable file")
    if s.semaphore.backend == "kubernetes":
        need(
            bool(re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?", s.identity.group)),
            "group",
            s.identity.group,
            "with backend kubernetes, a lowercase name (it names the Lease): letters, digits, '-' and '.'",
        )
    need(
        not (s.gates.prometheus_alert_filter_match_only and not s.gates.prometheus_alert_filter),
        "prometheus_alert_filter",
        s.gates.prometheus_alert_filter,
        "a regular expression when prometheus_alert_filter_match_only is true (else no alert could block)",
    )
    if s.reboot.reboot_method == "command":
        need(
            bool(s.reboot.reboot_command),
            "reboot_command",
            list(s.reboot.reboot_command),
            "a non-empty argv list",
        )
    need(os.path.isabs(s.host.host_root), "host_root", s.host.host_root, "an absolute path")
    need(os.path.isabs(s.host.boot_id_file), "boot_id_file", s.host.boot_id_file, "an absolute path")
    if s.host.host_exec == "nsenter":
        need(bool(s.host.nsenter_argv), "nsenter_argv", list(s.host.nsenter_argv), "a non-empty argv list")
    if s.reboot.reboot_signal_relay is not None:
        need(
            os.path.isabs(s.reboot.reboot_signal_relay),
            "reboot_signal_relay",
            s.reboot.reboot_signal_relay,
            "an absolute path of a Unix socket",
        )
        need(
            s.reboot.reboot_method == "signal",
            "reboot_signal_relay",
            s.reboot.reboot_signal_relay,
            "unset unless reboot_method is signal",
        )

    windows: list[Window] = []
    try:
        zone = load_zone(s.windows.time_zone, "time_zone")
        for i, spec in enumerate(s.windows.windows):
            try:
                windows.append(parse_window(spec, zone, f"windows[{i}]", load_zone))
            except WindowSpecError as exc:
                problems.append(Problem(exc.key, exc.value, exc.expected, sources.get("windows", "")))
            except (ValueError, TypeError, OverflowError, RecursionError):
                problems.append(
                    Problem(f"windows[{i}]", spec, "a window (see --help)", sources.get("windows", ""))
                )
    except WindowSpecError as exc:
        problems.append(Problem(exc.key, exc.value, exc.expected, sources.get("time_zone", "")))
    return s.replace(schedule=Schedule(tuple(windows))), problems
