"""What both command lines share: config layering from argv/env/file, logging, backends."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import yaml

from rebootcoord.core.config import ENV_CONFIG_FILE, KEYS, Invalid, Settings, flag_name, load_settings
from rebootcoord.errors import (
    AccessDenied,
    BackendUnavailable,
    ConfigError,
    CorruptDocument,
    Interrupted,
    Problem,
    SemaphoreError,
    UsageError,
    clipped,
    mask_urls,
)

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation was refused or failed (unknown holder, no free slot, ...)
EXIT_USAGE = 2  # usage or configuration error
EXIT_UNAVAILABLE = 3  # the backend could not be reached
EXIT_CORRUPT = 4  # a corrupted semaphore document

# What each failure a command may end with exits with, the most specific first (CorruptDocument
# before its SemaphoreError kin); anything else is a bug and keeps its traceback.
EXIT_CODES: tuple[tuple[type[Exception], int, str], ...] = (
    (ConfigError, EXIT_USAGE, ""),
    (UsageError, EXIT_USAGE, ""),
    (AccessDenied, EXIT_UNAVAILABLE, ""),
    (Interrupted, EXIT_UNAVAILABLE, ""),
    (BackendUnavailable, EXIT_UNAVAILABLE, "cannot reach the backend: "),
    (CorruptDocument, EXIT_CORRUPT, ""),
    (SemaphoreError, EXIT_FAILED, ""),
)


class Parser(argparse.ArgumentParser):
    """argparse with the usage-error exit code of both command lines (argparse's own is 2, too,
    but its subparsers would not inherit the class without ``parser_class``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def reported(prog: str, run: Callable[[], int]) -> int:
    """Run a command; a failure it may end with is one line on stderr and its exit code."""
    try:
        return run()
    except tuple(kind for kind, _, _ in EXIT_CODES) as exc:
        code, lead = next((c, lead) for kind, c, lead in EXIT_CODES if isinstance(exc, kind))
        print(mask_urls(f"{prog}: {lead}{exc}"), file=sys.stderr)
        return code


def add_config_flags(
    parser: argparse.ArgumentParser,
    keys: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    parser.add_argument("--config", metavar="FILE", help=f"YAML configuration file (or ${ENV_CONFIG_FILE})")
    group = parser.add_argument_group("configuration keys (also REBOOTCOORD_<KEY> and the file's <key>)")
    for name, fld in (keys or KEYS).items():
        flags = [flag_name(name), *(aliases or {}).get(name, ())]
        # argparse formats help with %: a key's own "10%" must stay text.
        help_text = str(fld.metadata["help"]).replace("%", "%%")
        group.add_argument(*flags, dest=f"cfg_{name}", metavar="VALUE", help=help_text)


def decode_flow(text: str) -> object:
    """Text from env and flags for a key that takes a list or a mapping: YAML flow, so that
    ``REBOOTCOORD_REBOOT_COMMAND='[systemctl, reboot]'`` reads as the file would."""
    if len(text) > MAX_CONFIG_BYTES:
        raise Invalid(f"at most {MAX_CONFIG_BYTES} characters")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"valid YAML ({exc.__class__.__name__})") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # 5,000-digit integers, deep nesting
        raise Invalid(f"YAML that can be read ({_yaml_failure(exc)})") from None


#: The largest configuration file, or value of one variable or flag, read.
MAX_CONFIG_BYTES = 1024 * 1024


def _yaml_failure(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return (
        "a number too large"
        if "integer" in str(exc) or isinstance(exc, OverflowError)
        else type(exc).__name__
    )


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
                text = fh.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise ConfigError([Problem("--config", path, f"a file of at most {MAX_CONFIG_BYTES} bytes")])
            file_data = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError([Problem("--config", path, f"a readable YAML file ({why})")]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem("--config", path, f"valid YAML ({clipped(str(exc), 300)})")]) from None
        except (ValueError, RecursionError, OverflowError) as exc:
            raise ConfigError(
                [Problem("--config", path, f"YAML that can be read ({_yaml_failure(exc)})")]
            ) from None
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
        decode_text=decode_flow,
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


class _MaskUrls(logging.Filter):
    """Every log line with the password of any URL in it masked (endpoints, errors that quote
    them): a log is read by more people than a Secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MaskUrls())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kubernetes", "urllib3", "grpc", "apprise"):  # apprise: a line per message sent
        logging.getLogger(noisy).setLevel(logging.WARNING)
