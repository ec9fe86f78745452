"""Notifications' configuration: notify_urls (secrets), notify_events, notify_templates; the
templates' fields and their rendering (rebootcoord.core.notices)."""

from __future__ import annotations

from typing import Any

import pytest

from rebootcoord.core.config import MASK, json_schema, load_settings, to_plain
from rebootcoord.core.notices import EVENTS, FIELDS, Severity, Templates, render
from rebootcoord.errors import ConfigError

SECRET = "xoxb-S3cr3tT0ken"


def load(file_data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    return load_settings(file_data=file_data or {}, env=env or {}, fallbacks={"node_name": "n1"})


def problems(**kwargs: Any) -> list[tuple[str, object, str]]:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    return [(p.key, p.value, p.expected) for p in info.value.problems]


def test_defaults_notify_nobody_about_every_event() -> None:
    s = load()
    assert s.notify.notify_urls == ()
    assert s.notify.notify_events == EVENTS == ("drain", "reboot", "done", "failure", "paused")
    assert s.notify.notify_templates == Templates()
    assert s.notify.notify_timeout.total_seconds() == 10


def test_urls_from_env_are_apart_by_spaces_or_commas_before_a_scheme() -> None:
    s = load(
        env={
            "REBOOTCOORD_NOTIFY_URLS": f"json://hooks.example/{SECRET}, mailto://u:p@mx?to=a@x,b@x slack://T/B/C"
        }
    )
    assert s.notify.notify_urls == (
        f"json://hooks.example/{SECRET}",
        "mailto://u:p@mx?to=a@x,b@x",
        "slack://T/B/C",
    )
    s = load(env={"REBOOTCOORD_NOTIFY_URLS": '["json://a/b", "form://c/d"]'})
    assert s.notify.notify_urls == ("json://a/b", "form://c/d")


def test_events_keep_cycle_order_and_templates_merge_over_the_defaults() -> None:
    s = load(
        {"notify_events": ["paused", "failure", "paused"], "notify_templates": {"done": "{node} is back"}}
    )
    assert s.notify.notify_events == ("failure", "paused")
    assert s.notify.notify_templates.done == "{node} is back"
    assert s.notify.notify_templates.drain == Templates().drain
    assert load(env={"REBOOTCOORD_NOTIFY_EVENTS": "done,failure"}).notify.notify_events == ("done", "failure")


@pytest.mark.parametrize(
    ("file_data", "key", "expected_part"),
    [
        pytest.param({"notify_urls": ["hooks.example/x"]}, "notify_urls[0]", "apprise URL", id="no-scheme"),
        pytest.param(
            {"notify_urls": ["json://a/b", "json://a b"]}, "notify_urls[1]", "no spaces", id="space"
        ),
        pytest.param({"notify_urls": {"a": 1}}, "notify_urls", "list of apprise URLs", id="mapping"),
        pytest.param({"notify_events": ["drian"]}, "notify_events", "did you mean 'drain'", id="event-typo"),
        pytest.param({"notify_events": 3}, "notify_events", "events among", id="event-type"),
        pytest.param({"notify_templates": "x"}, "notify_templates", "mapping of event", id="not-a-map"),
        pytest.param(
            {"notify_templates": {"don": "x"}}, "notify_templates.don", "did you mean 'done'", id="event"
        ),
        pytest.param(
            {"notify_templates": {"done": "{nod}"}}, "notify_templates.done", "{boot_id}", id="field"
        ),
        pytest.param(
            {"notify_templates": {"done": "{node.__class__}"}},
            "notify_templates.done",
            "{node}",
            id="attribute",
        ),
        pytest.param(
            {"notify_templates": {"done": "{0}"}}, "notify_templates.done", "not {0}", id="positional"
        ),
        pytest.param(
            {"notify_templates": {"done": "{}"}}, "notify_templates.done", "not {}", id="empty-field"
        ),
        pytest.param(
            {"notify_templates": {"done": "a } b"}}, "notify_templates.done", "write {{", id="brace"
        ),
        pytest.param(
            {"notify_templates": {"done": "{node:>999999999}"}}, "notify_templates.done", "width", id="huge"
        ),
        pytest.param(
            {"notify_templates": {"done": "{node!x}"}}, "notify_templates.done", "fields", id="conv"
        ),
        pytest.param({"notify_templates": {"done": " "}}, "notify_templates.done", "non-empty", id="blank"),
        pytest.param(
            {"notify_templates": {"done": 3}}, "notify_templates.done", "template text", id="number"
        ),
        pytest.param({"notify_timeout": "0s"}, "notify_timeout", "above zero", id="timeout"),
    ],
)
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(
    file_data: dict[str, Any], key: str, expected_part: str
) -> None:
    found = problems(file_data=file_data)
    assert [p[0] for p in found] == [key], found
    assert expected_part in found[0][2]


def test_a_bad_template_is_quoted_and_the_allowed_fields_listed() -> None:
    with pytest.raises(ConfigError) as info:
        load({"notify_templates": {"failure": "{node} {why}"}})
    text = str(info.value)
    assert "notify_templates.failure" in text and "'{node} {why}'" in text
    assert all("{" + f + "}" in text for f in FIELDS)


def test_a_url_is_never_echoed_by_an_error_or_the_printed_configuration() -> None:
    with pytest.raises(ConfigError) as info:
        load({"notify_urls": [f"json://bot:{SECRET}@hooks.example/x", f"not a url {SECRET}"]})
    assert "notify_urls[1]" in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(env={"REBOOTCOORD_NOTIFY_URLS": f'["json://{SECRET}/a", 3]'})
    assert "notify_urls[1]" in str(info.value) and SECRET not in str(info.value)
    s = load({"notify_urls": [f"slack://{SECRET}/B/C", f"json://u:{SECRET}@h/p"]})
    printed = to_plain(s)
    assert printed["notify_urls"] == ["slack://********", "json://********"]
    assert SECRET not in repr(printed)
    assert to_plain(load())["notify_urls"] == [], "nothing to hide: the empty list as it is"
    assert to_plain(s, mask_secrets=False)["notify_urls"][0] == f"slack://{SECRET}/B/C"
    assert MASK in printed["notify_urls"][0]


def test_the_printed_configuration_loads_back_and_the_schema_agrees() -> None:
    import jsonschema
    import yaml

    s = load({"notify_events": ["failure"], "notify_templates": {"failure": "{node}: {reason:.200}"}})
    printed = yaml.safe_load(yaml.safe_dump(to_plain(s)))
    assert load({k: v for k, v in printed.items() if k.startswith("notify")}) == s
    validator = jsonschema.Draft7Validator(json_schema())
    good = {
        "notify_urls": ["json://hooks.example/x", "mailto://u:p@mx.example"],
        "notify_events": ["done"],
        "notify_templates": {"done": "{node} is back"},
    }
    assert not list(validator.iter_errors(good))
    load(good)
    for bad in ({"notify_events": ["drian"]}, {"notify_templates": {"dun": "x"}}, {"notify_urls": ["x"]}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(ConfigError):
            load(bad)


@pytest.mark.parametrize("event", EVENTS)
def test_every_default_template_renders_with_every_field(event: str) -> None:
    notice = render(
        Templates(), event, node="n1", group="g", phase="verifying", reason="why", boot_id="boot-2"
    )
    assert notice.event == event and "n1" in notice.body and "n1" in notice.title
    assert notice.severity is {"done": Severity.SUCCESS, "failure": Severity.FAILURE}.get(
        event, Severity.WARNING if event == "paused" else Severity.INFO
    )


def test_a_template_with_every_field_and_a_precision() -> None:
    t = Templates(failure="{event} {node} {group} {phase} {boot_id} {{literal}} {reason:.5}")
    notice = render(
        t, "failure", node="n1", group="g", phase="draining", reason="evicting web-1", boot_id="b1"
    )
    assert notice.body == "failure n1 g draining b1 {literal} evict"
