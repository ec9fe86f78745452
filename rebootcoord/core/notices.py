"""Notifications to people: which events there are, the fields a message template may use, the
default templates, and a notice rendered from them. Pure: the sending is an adapter's
(rebootcoord.adapters.notify), the choosing of events the agent's.

A template is a ``str.format`` text over plain names only (``{node}``, ``{reason:.200}``): no
attribute or index lookups (``{node.__class__}``), no positional fields, so a configuration can
neither reach into objects nor fail at the moment a message is sent.
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How a receiver shows a notice (apprise's notify types)."""

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


@dataclass(frozen=True)
class Templates:
    """One message template per event; the field names are the events' names."""

    drain: str = "{node} ({group}): draining for a reboot: {reason}"
    reboot: str = "{node} ({group}): rebooting from boot {boot_id}: {reason}"
    done: str = "{node} ({group}): back healthy in boot {boot_id}; its slot is given back"
    failure: str = "{node} ({group}), {phase}: {reason}"
    paused: str = "{node} paused group {group}: {reason}"

    def of(self, event: str) -> str:
        return str(getattr(self, event))


#: The events, in cycle order: draining starts, the reboot is asked for, the node is released
#: healthy, something failed (drain, reboot, post-reboot checks), the node paused its group.
EVENTS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Templates))
#: What a template may name.
FIELDS: tuple[str, ...] = ("event", "node", "group", "phase", "reason", "boot_id")
SEVERITY = {
    "drain": Severity.INFO,
    "reboot": Severity.INFO,
    "done": Severity.SUCCESS,
    "failure": Severity.FAILURE,
    "paused": Severity.WARNING,
}
TITLE = "rebootcoord: {node} {event}"

# [[fill]align][width][.precision], at most four digits each: a template cannot ask for a
# message of gigabytes (``{node:>999999999}``).
_SPEC = re.compile(r"^(?:.?[<>^])?[0-9]{0,4}(?:\.[0-9]{1,4})?$")


class TemplateError(ValueError):
    """A template that cannot be used; the message says what is allowed."""


def check_template(template: str) -> None:
    """Raise TemplateError unless ``template`` names only FIELDS, with simple format specs."""
    allowed = ", ".join("{" + f + "}" for f in FIELDS)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # "Single '}' encountered": braces are doubled to be literal
        raise TemplateError(f"a template with fields {allowed} ({exc}; write {{{{ for a brace)") from None
    for _text, name, spec, _conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise TemplateError(f"a template whose fields are among {allowed} (not {{{name}}})")
        if spec and not _SPEC.match(spec):
            raise TemplateError(
                f"a template with fields {allowed} and at most a width or precision such as "
                f"{{reason:.200}} (not {{{name}:{spec}}})"
            )
    if not template.strip():
        raise TemplateError(f"a non-empty template with fields {allowed}")
    try:
        template.format_map(dict.fromkeys(FIELDS, "x"))
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"a template with fields {allowed} ({exc})") from None


@dataclass(frozen=True)
class Notice:
    """A message about one node, ready to be sent."""

    event: str
    title: str
    body: str
    severity: Severity


def render(
    templates: Templates,
    event: str,
    *,
    node: str,
    group: str,
    phase: str,
    reason: str,
    boot_id: str,
) -> Notice:
    """The notice of ``event`` from its template (checked by the configuration's parser)."""
    fields = {
        "event": event,
        "node": node,
        "group": group,
        "phase": phase,
        "reason": reason,
        "boot_id": boot_id,
    }
    return Notice(
        event=event,
        title=TITLE.format_map(fields),
        body=templates.of(event).format_map(fields),
        severity=SEVERITY[event],
    )
