"""What both command lines share: config layering from argv/env/file, logging, backends."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import select
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import yaml

from rebootcoord.core.config import (
    ENV_CONFIG_FILE,
    KEYS,
    Invalid,
    Settings,
    default_of,
    flag_name,
    load_settings,
    p_bool,
)
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


#: A program whose stdout was closed by its reader (``| head``) exits as if killed by SIGPIPE.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


class Parser(argparse.ArgumentParser):
    """argparse with the usage-error exit code of both command lines (argparse's own is 2, too,
    but its subparsers would not inherit the class without ``parser_class``), and a wrong
    invocation told in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "--check-interval -5s" gives the key a value that its own check refuses by name;
        # argparse would take "-5s" for an unknown option and name no key.
        self._negative_number_matcher = re.compile(r"^-\d")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The subcommands' parsers of ``parser``, each once."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub not in found:
                    found.append(sub)
    return found


def add_versions(parser: argparse.ArgumentParser, line: str) -> None:
    """``--version`` on ``parser`` and every subcommand under it: typed anywhere, it answers."""
    if not any("--version" in action.option_strings for action in parser._actions):
        parser.add_argument("--version", action="version", version=line, help="print the version and exit")
    for sub in subparsers(parser):
        add_versions(sub, line)


SHELLS = ("bash", "zsh")


def add_completion_parser(sub: Any, prog: str) -> None:
    """The ``completion`` subcommand: the script that completes ``prog``'s subcommands, options
    and choices in bash or zsh (argcomplete's, which asks the program itself as you type)."""
    p = sub.add_parser(
        "completion",
        help="print the shell completion script for bash or zsh",
        description=f"Print the script that completes {prog}'s subcommands, options and their "
        "choices as you type.",
        epilog=f"bash: add `source <({prog} completion bash)` to ~/.bashrc; zsh: add "
        f"`autoload -U compinit && compinit; source <({prog} completion zsh)` to ~/.zshrc",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in: %(choices)s")


def completion_script(prog: str, shell: str) -> str:
    import argcomplete

    return str(argcomplete.shellcode([prog], shell=shell))


def offer_completions(parser: argparse.ArgumentParser) -> None:
    """Answer the completion script's question and exit, when it is one (argcomplete sets
    ``_ARGCOMPLETE``); otherwise nothing, and argcomplete is not even imported."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def exit_with(run: Callable[[], int]) -> NoReturn:
    """A program's entry point: ``run``'s exit code. A reader that closed stdout early
    (``rebootctl -o json status | head``) ends the program quietly, as Unix tools do; any other
    broken pipe is a failure of its own."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # Python flushes stdout once more at exit: into /dev/null, not into the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_CLOSED_PIPE
    sys.exit(code)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


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
    *,
    default: Any = None,
) -> None:
    """The configuration keys as flags (``--<key>``, with ``aliases``). ``default``: what a flag
    not given leaves in the namespace (``argparse.SUPPRESS``: nothing, so that a subcommand's
    copy of the flags leaves a value given before the subcommand alone)."""
    parser.add_argument(
        "--config", metavar="FILE", default=default, help=f"YAML configuration file (or ${ENV_CONFIG_FILE})"
    )
    group = parser.add_argument_group("configuration keys (also REBOOTCOORD_<KEY> and the file's <key>)")
    for name, fld in (keys or KEYS).items():
        flags = [flag_name(name), *(aliases or {}).get(name, ())]
        choices = getattr(fld.metadata["parse"], "schema", {}).get("enum")
        metavar = "{" + ",".join(choices) + "}" if choices else "VALUE"
        # argparse formats help with %: a key's own "10%" must stay text.
        help_text = (str(fld.metadata["help"]) + _default_text(name)).replace("%", "%%")
        action = group.add_argument(
            *flags, dest=f"cfg_{name}", metavar=metavar, default=default, help=help_text
        )
        if choices:  # the values a shell completes (the key's own check still judges them)
            action.completer = _Values(choices)  # type: ignore[attr-defined]
        elif fld.metadata["parse"] is p_bool:
            action.completer = _Values(("true", "false"))  # type: ignore[attr-defined]


class _Values:
    """A completer of fixed values, as argcomplete calls it (without importing argcomplete)."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values = tuple(values)

    def __call__(self, **_: Any) -> tuple[str, ...]:
        return self.values


def _default_text(key: str) -> str:
    """ " (default: X)" for a key whose help does not say its default already; nothing for an
    empty one (its help says what empty means)."""
    if "default" in str(KEYS[key].metadata["help"]):
        return ""
    value = default_of(key)
    if value in (None, "", [], {}):
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()
    return f" (default: {text})"


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
    fallbacks: Mapping[str, object] | None = None,
) -> Settings:
    """``fallbacks``: defaults of the caller's own (below the file, env and flags)."""
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
        fallbacks={"node_name": env.get("NODE_NAME") or socket.gethostname(), **(fallbacks or {})},
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
