"""Configuration: one schema, four layers (flags > env > file > defaults), frozen settings in sections.

- ``parsers``: a raw value -> a typed value, or ``Invalid`` saying what was expected;
- ``settings``: the sections, each key declared once with its parser and help;
- ``schema``: the JSON Schema of the file (the chart's values.schema.json is generated from it);
- ``loader``: merging the layers, every problem collected before one ``ConfigError``.
"""

from rebootcoord.core.config.loader import decode_json, is_service_link, load_settings
from rebootcoord.core.config.parsers import (
    DETECTOR_TYPES,
    CheckSpec,
    DetectorSpec,
    Invalid,
    load_zone,
    p_bool,
    p_signal,
)
from rebootcoord.core.config.schema import describe_keys, json_schema
from rebootcoord.core.config.settings import (
    ENV_CONFIG_FILE,
    ENV_PREFIX,
    KEYS,
    MASK,
    DetectionSettings,
    DrainSettings,
    EtcdSettings,
    FleetLockSettings,
    GateSettings,
    HostSettings,
    Identity,
    KubeSettings,
    NotifySettings,
    ObservabilitySettings,
    RebootSettings,
    SemaphoreSettings,
    Settings,
    VerifySettings,
    WindowSettings,
    default_of,
    env_name,
    flag_name,
    to_plain,
)

__all__ = [
    "DETECTOR_TYPES",
    "ENV_CONFIG_FILE",
    "ENV_PREFIX",
    "KEYS",
    "MASK",
    "CheckSpec",
    "DetectionSettings",
    "DetectorSpec",
    "DrainSettings",
    "EtcdSettings",
    "FleetLockSettings",
    "GateSettings",
    "HostSettings",
    "Identity",
    "Invalid",
    "KubeSettings",
    "NotifySettings",
    "ObservabilitySettings",
    "RebootSettings",
    "SemaphoreSettings",
    "Settings",
    "VerifySettings",
    "WindowSettings",
    "decode_json",
    "default_of",
    "describe_keys",
    "env_name",
    "flag_name",
    "is_service_link",
    "json_schema",
    "load_settings",
    "load_zone",
    "p_bool",
    "p_signal",
    "to_plain",
]
