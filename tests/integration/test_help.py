"""Both programs as a user first meets them: every command's --help and --version, a closed
pipe, shell completion in a real bash and zsh, and wrong invocations.

The commands are found by walking the real parsers, so a new subcommand is checked the day it is
added; each is run through its installed entry point (.venv/bin), as a user runs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebootcoord import __version__
from rebootcoord.cli import main as rebootcoord_cli
from rebootcoord.cli import rebootctl as rebootctl_cli
from rebootcoord.cli.common import EXIT_CLOSED_PIPE, EXIT_USAGE
from rebootcoord.sim.etcd_server import EtcdServer

BIN = Path(sys.executable).parent
PROGRAMS = {"rebootcoord": rebootcoord_cli.parser, "rebootctl": rebootctl_cli.parser}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """``path`` and the path of every subcommand under it, depth first."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def parser_at(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        parser = next(
            action.choices[name]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) and name in action.choices
        )
    return parser


EVERY_COMMAND = [(prog, path) for prog, make in PROGRAMS.items() for path in commands(make())]


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """``argv`` through its installed entry point, without the caller's REBOOTCOORD_ variables;
    stdout and stderr captured unless ``kw`` says where they go."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(BIN / argv[0]), *argv[1:]], text=True, timeout=60, env=env, **streams
    )


def test_the_walk_finds_every_command() -> None:
    found = {" ".join((prog, *path)) for prog, path in EVERY_COMMAND}
    for expected in ("rebootcoord agent", "rebootcoord fleetlock-server", "rebootcoord simulate",
                     "rebootcoord completion", "rebootctl status", "rebootctl unlock"):  # fmt: skip
        assert expected in found, sorted(found)


@pytest.mark.parametrize(("prog", "path"), EVERY_COMMAND, ids=[" ".join((p, *c)) for p, c in EVERY_COMMAND])
def test_every_command_answers_help_and_version(prog: str, path: tuple[str, ...]) -> None:
    shown = run(prog, *path, "--help")
    assert shown.returncode == 0 and not shown.stderr, shown.stderr
    assert shown.stdout.startswith("usage: "), shown.stdout[:200]
    parser = parser_at(PROGRAMS[prog](), path)
    assert parser.description or not path, f"{prog} {' '.join(path)}: no description"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{prog} {' '.join(path)} {choice.dest}: no help"
                assert choice.dest in shown.stdout
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{prog} {' '.join(path)} {name}: no help"
        for flag in action.option_strings:
            assert flag in shown.stdout, f"{flag} missing from the help of {prog} {' '.join(path)}"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            for choice in action.choices:
                assert str(choice) in shown.stdout, f"{name}: choice {choice} not in the help"
    version = run(prog, *path, "--version")
    assert version.returncode == 0 and not version.stderr, version.stderr
    assert version.stdout == f"{prog} {__version__}\n"


def test_the_agent_help_gives_every_key_its_choices_and_default() -> None:
    shown = " ".join(run("rebootcoord", "agent", "--help").stdout.split())  # as wrapped for the terminal
    assert "--backend {etcd,kubernetes,fleetlock}" in shown
    assert "(default: 30s)" in shown  # waiter_ttl
    assert "(default: SIGRTMIN+5)" in shown  # reboot_signal, by its name as a file writes it
    assert "(default: [systemctl, reboot])" in shown
    assert "$REBOOTCOORD_CONFIG" in shown and "Exit codes: 0 stopped" in shown


def test_print_config_names_the_signal_and_works_for_the_server() -> None:
    for command in ("agent", "fleetlock-server"):
        shown = run("rebootcoord", command, "--print-config")
        assert shown.returncode == 0, shown.stderr
        assert "reboot_signal: SIGRTMIN+5\n" in shown.stdout
    again = run("rebootcoord", "agent", "--print-config", "--reboot-signal", "SIGRTMIN+15")
    assert "reboot_signal: SIGRTMIN+15\n" in again.stdout


CLOSED_PIPE = [
    ("rebootcoord", "agent", "--help"),
    ("rebootcoord", "--help"),
    ("rebootctl", "--help"),
    ("rebootcoord", "agent", "--print-config"),
    ("rebootcoord", "completion", "bash"),
]


@pytest.mark.parametrize("argv", CLOSED_PIPE, ids=" ".join)
def test_a_reader_that_closed_the_pipe_ends_the_program_quietly(argv: tuple[str, ...]) -> None:
    """As with `| head`: the reader went away before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run(*argv, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    # argparse drops what it cannot print (0); our own output ends as if by SIGPIPE (141)
    assert done.returncode in (0, EXIT_CLOSED_PIPE) and done.stderr == "", done.stderr
    if "--help" not in argv:
        assert done.returncode == EXIT_CLOSED_PIPE


def test_a_pipe_read_to_its_end_is_not_mistaken_for_a_closed_one() -> None:
    done = subprocess.run(
        f"{BIN / 'rebootcoord'} agent --help | head -c 10; echo \" ${{PIPESTATUS[0]}}\"",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.startswith("usage: reb") and done.stderr == ""


def complete_in_bash(prog: str, line: str) -> list[str]:
    """What bash offers at the end of ``line``, through the script ``prog completion bash``
    prints, sourced as the README says."""
    words = line.split(" ")
    script = (
        f"source <({BIN / prog} completion bash)\n"
        f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
        f"COMP_CWORD={len(words) - 1}\n"
        f"_python_argcomplete {prog}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    offered = [w.strip() for w in done.stdout.splitlines() if w.strip()]
    if not words[-1].startswith("-"):
        offered = [w for w in offered if not w.startswith("-")]  # the options argcomplete adds
    return sorted(offered)


def test_bash_completes_subcommands_options_and_choices() -> None:
    assert complete_in_bash("rebootcoord", "rebootcoord ") == sorted(
        ["agent", "completion", "fleetlock-server", "signal-relay", "simulate"]
    )
    agent = "rebootcoord agent"
    assert complete_in_bash("rebootcoord", f"{agent} --backend ") == ["etcd", "fleetlock", "kubernetes"]
    assert complete_in_bash("rebootcoord", f"{agent} --drain-f") == ["--drain-failure", "--drain-force"]
    assert complete_in_bash("rebootcoord", f"{agent} --drain-force ") == ["false", "true"]
    assert "--fail-node" in complete_in_bash("rebootcoord", "rebootcoord simulate --")
    assert complete_in_bash("rebootctl", "rebootctl ") == sorted(
        name for name in commands_of("rebootctl") if name
    )
    assert complete_in_bash("rebootctl", "rebootctl status -o ") == ["json", "table", "yaml"]


def commands_of(prog: str) -> list[str]:
    return [path[0] for p, path in EVERY_COMMAND if p == prog and len(path) == 1]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (hack/ci-deps.sh installs it)")
def test_zsh_loads_the_completion_for_both_programs() -> None:
    for prog in PROGRAMS:
        script = (
            "autoload -U compinit && compinit -u -D\n"
            f"source <({BIN / prog} completion zsh)\n"
            f"print -r -- ${{_comps[{prog}]}}\n"
        )
        done = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.strip() == "_python_argcomplete", done.stdout


# Wrong invocations: exit 2, one line that names the option and what was expected.
WRONG = [
    (("rebootcoord",), "required: COMMAND"),
    (("rebootcoord", "nosuch"), "'nosuch'"),
    (("rebootcoord", "agent", "--bogus"), "--bogus"),
    (("rebootcoord", "agent", "--max-holders"), "--max-holders: expected one argument"),
    (("rebootcoord", "simulate", "--nodes", "many"), "--nodes"),
    (("rebootcoord", "completion", "fish"), "'fish'"),
    (("rebootcoord", "completion"), "shell"),
    (("rebootcoord", "signal-relay"), "--socket"),
    (("rebootctl",), "required"),
    (("rebootctl", "nosuch"), "'nosuch'"),
    (("rebootctl", "set-max", "many"), "'many'"),
    (("rebootctl", "-o", "xml", "status"), "'xml'"),
    (("rebootctl", "unlock"), "id"),
]


@pytest.mark.parametrize(("argv", "named"), WRONG, ids=[" ".join(a) for a, _ in WRONG])
def test_a_wrong_invocation_is_one_line_naming_the_option(argv: tuple[str, ...], named: str) -> None:
    done = run(*argv)
    assert done.returncode == EXIT_USAGE, (done.returncode, done.stderr)
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{' '.join(argv[:1])}"), done.stderr


CONFIG_REFUSALS = [
    (("--check-interval", "-5s"), "check_interval (from flag --check-interval): got '-5s'"),
    (("--reboot-command", "[./reboot.sh]"), "reboot_command (from flag --reboot-command): got ['./"),
    (("--detectors", "[{type: command, argv: [bin/check]}]"), "detectors[0].argv"),
]


@pytest.mark.parametrize(("args", "named"), CONFIG_REFUSALS, ids=[a[0] for a, _ in CONFIG_REFUSALS])
def test_a_bad_value_as_a_flag_is_refused_by_its_key(args: tuple[str, ...], named: str) -> None:
    done = run("rebootcoord", "agent", "--print-config", *args)
    assert done.returncode == EXIT_USAGE and done.stdout == "", done.stdout
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("output", ["json", "yaml", "table"])
def test_status_into_a_closed_pipe_ends_quietly(etcd: EtcdServer, prefix: str, output: str) -> None:
    """The friction as a user met it: `rebootctl -o json status | head` ended in a traceback."""
    flags = ("--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix)
    assert run("rebootctl", *flags, "set-max", "3").returncode == 0
    assert run("rebootctl", *flags, "lock", "node-a").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run("rebootctl", *flags, "-o", output, "status", stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_CLOSED_PIPE and done.stderr == "", done.stderr


def test_the_agent_refuses_to_start_on_a_host_root_that_does_not_exist() -> None:
    """Checked when the agent starts, not when a configuration is read: --print-config and
    rebootctl read the same file on machines without the host mounted."""
    done = run(
        "rebootcoord", "agent", "--host-root", "/nonexistent/host", "--etcd-endpoints", "http://127.0.0.1:1"
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "host_root: got '/nonexistent/host', expected an existing directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert run("rebootcoord", "agent", "--print-config", "--host-root", "/nonexistent/host").returncode == 0
