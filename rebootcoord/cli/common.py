"""What both command lines share: config layering from argv/env/file, logging, backends."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from rebootcoord.core.config import ENV_CONFIG_FILE, KEYS, Settings, flag_name, load_settings
from rebootcoord.errors import ConfigError, Problem

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation was refused or failed (unknown holder, no free slot, ...)
EXIT_USAGE = 2  # usage or configuration error
EXIT_UNAVAILABLE = 3  # the backend could not be reached
EXIT_CORRUPT = 4  # a corrupted semaphore document


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    parser.add_argument("--config", metavar="FILE", help=f"YAML configuration file (or ${ENV_CONFIG_FILE})")
    group = parser.add_argument_group("configuration keys (also REBOOTCOORD_<KEY> and the file's <key>)")
    for name, fld in (keys or KEYS).items():
        flags = [flag_name(name), *(aliases or {}).get(name, ())]
        group.add_argument(*flags, dest=f"cfg_{name}", metavar="VALUE", help=fld.metadata["help"])


def settings_from_args(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    extra_flags: Mapping[str, object] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    path = args.config or env.get(ENV_CONFIG_FILE)
    file_data = None
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                file_data = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError([Problem("--config", path, f"a readable YAML file ({exc.strerror})")]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem("--config", path, f"valid YAML ({exc})")]) from None
        if file_data is None:
            file_data = {}
    flags = {name[4:]: value for name, value in vars(args).items() if name.startswith("cfg_")}
    flags.update(extra_flags or {})
    return load_settings(
        file_data=file_data,
        file_name=str(path or ""),
        env=env,
        flags=flags,
        fallbacks={"node_name": env.get("NODE_NAME") or socket.gethostname()},
    )


class JsonFormatter(logging.Formatter):
    FIELDS = ("node", "group", "phase", "reason", "holder")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kubernetes", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_config_error(prog: str, exc: ConfigError) -> int:
    print(f"{prog}: {exc}", file=sys.stderr)
    return EXIT_USAGE
