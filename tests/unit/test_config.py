"""Configuration: layering, every class of invalid input, secrets masked."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest

from rebootcoord.cli.common import decode_flow
from rebootcoord.core.config import MASK, load_settings, to_plain
from rebootcoord.errors import ConfigError, Problem, mask_urls


def load(file_data: object = None, env: dict[str, str] | None = None, flags: dict[str, object] | None = None):
    return load_settings(
        file_data=file_data,
        file_name="agent.yaml",
        env=env or {},
        flags=flags or {},
        fallbacks={"node_name": "n1"},
        decode_text=decode_flow,
    )


def problems(**kwargs: object) -> list[tuple[str, object, str, str]]:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    return [(p.key, p.value, p.expected, p.source) for p in info.value.problems]


def test_defaults() -> None:
    s = load()
    assert s.identity.node_name == "n1" and s.identity.holder == "n1"
    assert s.identity.group == "default"
    assert s.reboot.reboot_command == ("systemctl", "reboot")
    assert s.reboot.reboot_signal == int(signal.SIGRTMIN) + 5
    assert (
        s.detection.detectors[0].type == "sentinel"
        and s.detection.detectors[0].path == "/run/reboot-required"
    )
    assert s.windows.schedule.windows == ()


def test_precedence_flags_over_env_over_file_over_defaults() -> None:
    file = {"group": "from-file", "max_holders": 3, "check_interval": "2m"}
    env = {"REBOOTCOORD_GROUP": "from-env", "REBOOTCOORD_MAX_HOLDERS": "4"}
    flags = {"group": "from-flag"}
    s = load(file, env, flags)
    assert s.identity.group == "from-flag"
    assert s.semaphore.max_holders == 4
    assert s.detection.check_interval == timedelta(minutes=2)
    assert s.windows.time_zone == "UTC"


def test_env_values_are_parsed_like_file_values() -> None:
    s = load(
        env={
            "REBOOTCOORD_ETCD_ENDPOINTS": "http://a:2379,https://b:2379",
            "REBOOTCOORD_REBOOT_COMMAND": "[systemctl, reboot, --force]",
            "REBOOTCOORD_WINDOWS": '[{start: "Thu 04:00", length: 1h}]',
            "REBOOTCOORD_DETECTORS": "sentinel,rpm-ostree",
            "REBOOTCOORD_REBOOT_SIGNAL": "RTMIN+6",
        }
    )
    assert s.etcd.etcd_endpoints == ("http://a:2379", "https://b:2379")
    assert s.reboot.reboot_command == ("systemctl", "reboot", "--force")
    assert len(s.windows.schedule.windows) == 1
    assert [d.type for d in s.detection.detectors] == ["sentinel", "rpm-ostree"]
    assert s.detection.detectors[1].argv == ("rpm-ostree", "status", "--json")
    assert s.reboot.reboot_signal == int(signal.SIGRTMIN) + 6


def test_node_name_from_fallback_and_holder_id() -> None:
    s = load({"holder_id": "abc123"})
    assert s.identity.node == "n1" and s.identity.holder == "abc123"


@pytest.mark.parametrize(
    ("kwargs", "key", "expected_part"),
    [
        pytest.param(
            {"file_data": {"max_holder": 2}}, "max_holder", "did you mean 'max_holders'", id="unknown-key"
        ),
        pytest.param({"env": {"REBOOTCOORD_GRUOP": "x"}}, "gruop", "did you mean 'group'", id="unknown-env"),
        pytest.param({"file_data": {"max_holders": "two"}}, "max_holders", "whole number", id="wrong-type"),
        pytest.param({"file_data": {"max_holders": True}}, "max_holders", "whole number", id="bool-not-int"),
        pytest.param({"file_data": {"max_holders": 0}}, "max_holders", "from 1 to 10000", id="max-below-1"),
        pytest.param(
            {"env": {"REBOOTCOORD_MAX_HOLDERS": "-3"}},
            "max_holders",
            "from 1 to 10000",
            id="max-negative-env",
        ),
        pytest.param(
            {"file_data": {"check_interval": "5 minutes"}}, "check_interval", "duration", id="bad-duration"
        ),
        pytest.param(
            {"file_data": {"check_interval": "0s"}}, "check_interval", "above zero", id="zero-duration"
        ),
        pytest.param(
            {"file_data": {"windows": [{"start": "Thu 4", "length": "1x"}]}},
            "windows[0].length",
            "duration",
            id="bad-window",
        ),
        pytest.param({"file_data": {"time_zone": "Europe/Atlantis"}}, "time_zone", "IANA", id="unknown-zone"),
        pytest.param({"file_data": {"node_name": ""}}, "node_name", "node name", id="missing-node-name"),
        pytest.param(
            {"file_data": {"etcd_endpoints": []}}, "etcd_endpoints", "at least one", id="no-endpoints"
        ),
        pytest.param(
            {"file_data": {"etcd_endpoints": ["etcd:port"]}}, "etcd_endpoints", "endpoints", id="bad-ep"
        ),
        pytest.param(
            {"file_data": {"reboot_command": "systemctl reboot"}}, "reboot_command", "argv", id="shell"
        ),
        pytest.param({"file_data": {"reboot_command": []}}, "reboot_command", "argv", id="empty-reboot"),
        pytest.param({"file_data": {"reboot_method": "kexec"}}, "reboot_method", "one of", id="bad-enum"),
        pytest.param({"file_data": {"reboot_signal": "SIGFOO"}}, "reboot_signal", "signal", id="bad-signal"),
        pytest.param(
            {"file_data": {"reboot_signal": "SIGRTMIN+4"}},
            "reboot_signal",
            "asks PID 1 for a reboot",
            id="poweroff",
        ),
        pytest.param(
            {"file_data": {"reboot_signal": 15}}, "reboot_signal", "SIGRTMIN+5 (reboot)", id="sigterm"
        ),
        pytest.param({"file_data": {"group": "a/b"}}, "group", "letters", id="bad-group"),
        pytest.param(
            {"file_data": {"etcd_username": "root"}}, "etcd_password", "together", id="user-no-pass"
        ),
        pytest.param(
            {"file_data": {"etcd_cert_file": "/etc/hosts"}}, "etcd_key_file", "together", id="cert-no-key"
        ),
        pytest.param(
            {"file_data": {"etcd_ca_file": "/nonexistent/ca.pem"}}, "etcd_ca_file", "readable", id="no-ca"
        ),
        pytest.param(
            {"file_data": {"detectors": [{"type": "apt"}]}}, "detectors[0].type", "one of", id="bad-det"
        ),
        pytest.param(
            {"file_data": {"detectors": [{"type": "command"}]}}, "detectors[0].argv", "argv", id="cmd-argv"
        ),
        pytest.param(
            {"file_data": {"detectors": [{"type": "sentinel", "paht": "/x"}]}},
            "detectors[0].paht",
            "did you mean 'path'",
            id="det-typo",
        ),
        pytest.param(
            {"file_data": {"detectors": [{"type": "command", "argv": ["x"], "reboot_exit_codes": [300]}]}},
            "detectors[0].reboot_exit_codes",
            "from 0 to 255",
            id="exit-code",
        ),
        pytest.param(
            {"file_data": {"health_checks": [{"type": "http", "url": "file:///etc/passwd"}]}},
            "health_checks[0].url",
            "http",
            id="check-url",
        ),
        pytest.param(
            {"file_data": {"metrics_address": "9090"}}, "metrics_address", "host:port", id="address"
        ),
        pytest.param({"file_data": ["a", "b"]}, "(config file)", "mapping", id="not-a-mapping"),
        pytest.param(
            {"file_data": {"host_root": "relative/dir"}}, "host_root", "absolute", id="relative-root"
        ),
        pytest.param(
            {"file_data": {"prometheus_alert_filter_match_only": True}},
            "prometheus_alert_filter",
            "regular expression",
            id="match-only-without-filter",
        ),
    ],
)
def test_invalid_configuration_names_key_value_and_expectation(
    kwargs: dict, key: str, expected_part: str
) -> None:
    found = problems(**kwargs)
    keys = [p[0] for p in found]
    assert key in keys, found
    problem = found[keys.index(key)]
    assert expected_part in problem[2]
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    assert f"{key}" in str(info.value) and "expected" in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(file_data={"max_holders": 0, "check_interval": "x", "colour": "blue"})
    assert {p[0] for p in found} == {"max_holders", "check_interval", "colour"}
    assert all(p[3].startswith("file agent.yaml") for p in found)


def test_source_is_named() -> None:
    found = problems(env={"REBOOTCOORD_MAX_HOLDERS": "zero"})
    assert found == [("max_holders", "zero", "a whole number", "env REBOOTCOORD_MAX_HOLDERS")]


# What the kubelet injects for a Service named "rebootcoord" (the chart's own metrics Service)
# and one named "rebootcoord-fleetlock" with a named port, when a pod spec keeps enableServiceLinks.
SERVICE_LINKS = {
    "REBOOTCOORD_SERVICE_HOST": "10.0.0.12",
    "REBOOTCOORD_SERVICE_PORT": "9727",
    "REBOOTCOORD_SERVICE_PORT_METRICS": "9727",
    "REBOOTCOORD_PORT": "tcp://10.0.0.12:9727",
    "REBOOTCOORD_PORT_9727_TCP": "tcp://10.0.0.12:9727",
    "REBOOTCOORD_PORT_9727_TCP_PROTO": "tcp",
    "REBOOTCOORD_PORT_9727_TCP_PORT": "9727",
    "REBOOTCOORD_PORT_9727_TCP_ADDR": "10.0.0.12",
    "REBOOTCOORD_FLEETLOCK_SERVICE_HOST": "fd00::12",
    "REBOOTCOORD_FLEETLOCK_PORT": "tcp://[fd00::12]:8080",
    "REBOOTCOORD_FLEETLOCK_PORT_8080_TCP_ADDR": "fd00::12",
}


def test_service_link_variables_are_not_configuration() -> None:
    s = load(env={**SERVICE_LINKS, "REBOOTCOORD_MAX_HOLDERS": "3"})
    assert s.semaphore.max_holders == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("REBOOTCOORD_MAX_HOLDRES", "3", id="misspelled-key"),
        pytest.param("REBOOTCOORD_METRICS_PORT", "9727", id="port-name-without-a-url"),
        pytest.param("REBOOTCOORD_SERVICE_HOST", "etcd-1", id="service-host-not-an-ip"),
        pytest.param("REBOOTCOORD_PORT_9727_TCP_PORT", "x", id="link-port-not-a-number"),
    ],
)
def test_a_misspelled_key_is_still_an_error_beside_service_links(name: str, value: str) -> None:
    found = problems(env={**SERVICE_LINKS, name: value})
    assert [(p[0], p[3]) for p in found] == [(name[len("REBOOTCOORD_") :].lower(), f"env {name}")]


def test_print_config_masks_secrets() -> None:
    s = load({"etcd_username": "root", "etcd_password": "hunter2", "etcd_endpoints": ["https://e:2379"]})
    plain = to_plain(s)
    assert plain["etcd_password"] == MASK
    assert "hunter2" not in repr(plain)
    assert plain["check_interval"] == "1m"
    assert plain["detectors"][0]["type"] == "sentinel"


def test_json_schema_accepts_the_defaults_and_rejects_what_the_loader_rejects() -> None:
    import jsonschema

    from rebootcoord.core.config import json_schema

    schema = json_schema()
    validator = jsonschema.Draft7Validator(schema)
    defaults = to_plain(load())
    defaults.pop("etcd_password")
    assert not list(validator.iter_errors(defaults))
    good = {
        "windows": [
            {"start": "Thu 04:00", "length": "1h"},
            {"days": ["mon"], "start": "22:00", "end": "06:00"},
        ],
        "detectors": [
            "sentinel",
            {"type": "command", "argv": ["needs-restarting", "-r"], "reboot_exit_codes": [1]},
        ],
        "health_checks": [{"type": "http", "url": "http://127.0.0.1:10248/healthz"}],
        "pre_reboot_labels": ["rebootcoord.io/rebooting=true"],
    }
    assert not list(validator.iter_errors(good))
    load(good)  # and the loader agrees
    for bad in (
        {"max_holders": 0},
        {"colour": "blue"},
        {"reboot_command": "systemctl reboot"},
        {"node_ops": "x"},
    ):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(ConfigError):
            load(bad)


def test_kubernetes_backend_needs_a_lowercase_group() -> None:
    found = problems(file_data={"backend": "kubernetes", "group": "Workers"})
    assert found[0][0] == "group" and "lowercase" in found[0][2]


def test_printed_configuration_loads_back_unchanged() -> None:
    import yaml

    source = {
        "detectors": [
            "sentinel",
            {
                "type": "command",
                "argv": ["needs-restarting", "-r"],
                "reboot_exit_codes": [1],
                "no_reboot_exit_codes": [0],
            },
            {"type": "rpm-ostree", "timeout": "45s"},
        ],
        "health_checks": [{"type": "http", "url": "http://127.0.0.1:1/healthz", "expect_status": [200, 204]}],
        "windows": [{"start": "Thu 04:00", "length": "1h30m"}],
        "pre_reboot_labels": ["example.com/rebooting=yes"],
        "release_delay": "2m",
    }
    first = load(source)
    printed = yaml.safe_load(yaml.safe_dump(to_plain(first)))
    assert load(printed) == first


def test_text_is_decoded_only_for_keys_that_take_lists() -> None:
    # A regular expression that looks like a YAML list stays a string; an argv from env is a list.
    s = load(env={"REBOOTCOORD_PROMETHEUS_ALERT_FILTER": "[A-Z]+", "REBOOTCOORD_REBOOT_COMMAND": "[a, b]"})
    assert s.gates.prometheus_alert_filter == "[A-Z]+"
    assert s.reboot.reboot_command == ("a", "b")


def test_core_decodes_json_without_the_yaml_library() -> None:
    s = load_settings(env={"REBOOTCOORD_REBOOT_COMMAND": '["a", "b"]'}, fallbacks={"node_name": "n1"})
    assert s.reboot.reboot_command == ("a", "b")
    with pytest.raises(ConfigError) as info:
        load_settings(env={"REBOOTCOORD_REBOOT_COMMAND": "[a, b]"}, fallbacks={"node_name": "n1"})
    [problem] = info.value.problems
    assert problem.key == "reboot_command" and problem.value == "[a, b]" and "JSON" in problem.expected


@pytest.mark.parametrize("value", ["4s", "1.5s", "2h", "0"])
def test_waiter_ttl_is_checked_once_here(value: str) -> None:
    [(key, got, expected, source)] = problems(file_data={"waiter_ttl": value})
    assert key == "waiter_ttl" and got == value and "5s to 1h" in expected and source == "file agent.yaml"


def test_sections_hold_the_keys_and_replace_keeps_the_rest() -> None:
    s = load(file_data={"max_holders": 3, "drain_timeout": "1m"})
    assert s.semaphore.max_holders == 3 and s.drain.drain_timeout == timedelta(minutes=1)
    t = s.replace(max_holders=5)
    assert t.semaphore.max_holders == 5 and t.drain == s.drain and s.semaphore.max_holders == 3


def test_no_error_prints_a_secret() -> None:
    """A misspelled secret key, a secret of the wrong type, a password in a URL: every error
    names the key and what was expected, never the secret."""
    found = problems(
        file_data={
            "etcd_passwd": "hunter2",  # misspelled: unknown, but its name says secret
            "etcd_password": ["hunter2"],  # wrong type
            "etcd_endpoints": "https://root:hunter2@etcd:2379, nonsense",
            "prometheus_url": "ftp://root:hunter2@prom",
        }
    )
    text = str(ConfigError([Problem(*p[:3], p[3]) for p in found]))
    assert "hunter2" not in text, text
    assert {p[0] for p in found} >= {"etcd_passwd", "etcd_password", "prometheus_url"}
    assert "https://root:********@etcd:2379" in text or "etcd_endpoints" not in text


def test_a_password_over_plain_http_is_refused_unless_allowed() -> None:
    found = problems(file_data={"etcd_username": "root", "etcd_password": "hunter2"})
    assert [(p[0], p[1]) for p in found] == [("etcd_password", MASK)]
    assert "https://" in found[0][2] and "etcd_allow_plaintext_password" in found[0][2]
    s = load({"etcd_username": "root", "etcd_password": "hunter2", "etcd_allow_plaintext_password": True})
    assert s.etcd.etcd_password == "hunter2"
    load({"etcd_username": "root", "etcd_password": "hunter2", "etcd_endpoints": ["https://e:2379"]})


def test_cross_checks_are_reported_with_the_per_key_problems() -> None:
    """One run names every problem: a bad value and a check across keys together."""
    found = problems(file_data={"check_interval": "soon", "etcd_username": "root"})
    assert {p[0] for p in found} == {"check_interval", "etcd_password"}


def test_a_url_password_is_masked_wherever_an_url_is_printed() -> None:
    s = load({"prometheus_url": "https://root:hunter2@prom:9090"})
    assert to_plain(s)["prometheus_url"] == "https://root:********@prom:9090"
    assert to_plain(s, mask_secrets=False)["prometheus_url"] == "https://root:hunter2@prom:9090"
    assert mask_urls(["http://a:b@c", "http://c"]) == ["http://a:********@c", "http://c"]
