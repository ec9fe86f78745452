"""The docs run: every shell block of README.md and docs/*.md is marked, the marked ones parse (the
commands they name exist, with the flags they give), the run blocks run on this machine against
the test etcd or the test control plane, and every output block matches what the program prints.
The convention and the pattern language: docs/development.md, "The docs test"."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rebootcoord.cli import main as rebootcoord_cli
from rebootcoord.cli import rebootctl as rebootctl_cli
from rebootcoord.daemon.metrics import FAILURE_REASONS, Metrics
from tests.docs.mdblocks import (
    DOCS_COUNTS,
    ETCD_PLACEHOLDER,
    KUBE_NAMESPACE,
    REPO,
    Block,
    Run,
    commands,
    doc_files,
    line_pattern,
    mismatch,
    plan,
)

PLAN = plan(doc_files())
RUN_TIMEOUT = 300  # one block; the longest, a rollout in waves, takes about 25 s
#: Never reinstall the shared .venv from a docs block: `make demo` runs what is installed.
#: What a make running the suite tells the makes below it.
MAKE_VARIABLES = frozenset({"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"})
MAKE_SHIM = 'make() { command make -o .venv/.installed "$@"; }\n'
#: Top-level entries a docs block may name before they exist (built or written by a make target).
GENERATED = {"testbin", ".cluster", "dist", "sim-run"}


def counts(config: pytest.Config) -> Counter[str]:
    return config.stash.setdefault(DOCS_COUNTS, Counter())


# --------------------------------------------------------------------------------------------
# Every block is marked


def test_every_shell_block_of_the_docs_carries_a_doc_test_marker() -> None:
    assert PLAN.runs and PLAN.parses
    assert not PLAN.problems, "\n".join(PLAN.problems)


# --------------------------------------------------------------------------------------------
# Parse: the commands named exist, with the flags given


def _argparse_errors(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


@cache
def make_targets() -> frozenset[str]:
    files = [REPO / "Makefile"]
    files += [REPO / m for m in re.findall(r"^-?include\s+(\S+)", files[0].read_text(), re.M)]
    targets: set[str] = set()
    for path in files:
        if path.exists():
            for names in re.findall(r"^([A-Za-z0-9_./ -]+?)\s*::?(?!=)", path.read_text(), re.M):
                targets.update(n for n in names.split() if not n.startswith("."))
    return frozenset(targets)


@cache
def script_help(script: str) -> str:
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    return out.stdout + out.stderr


def _repo_path_problem(word: str) -> str | None:
    if "/" not in word or word.startswith(("/", "$", "~", "-")) or "://" in word or "=" in word:
        return None
    first = word.split("/", 1)[0]
    if first in GENERATED or not (REPO / first).is_dir() or (REPO / word).exists():
        return None
    return f"{word}: no such file in the repository"


def command_problems(argv: list[str]) -> list[str]:
    """What is wrong with one documented command ([] if nothing)."""
    program, args = argv[0], argv[1:]
    name = program.rsplit("/", 1)[-1]
    problems = [p for p in map(_repo_path_problem, argv) if p]
    if name == "kubectl" and args[:1] == ["rebootctl"]:  # the kubectl plugin
        name, args = "rebootctl", args[1:]
    if name == "rebootcoord":
        problems.append(_argparse_errors(rebootcoord_cli.parser(), args) or "")
    elif name == "rebootctl":
        problems.append(_argparse_errors(rebootctl_cli.parser(), args) or "")
    elif name == "make":
        wanted = [a for a in args if not a.startswith("-") and "=" not in a and not a.startswith("[")]
        problems += [f"make {t}: no such target in the Makefile" for t in wanted if t not in make_targets()]
    elif re.fullmatch(r"python(3(\.\d+)?)?", name) and args and args[0].endswith(".py"):
        script = REPO / args[0]
        if not script.exists():
            problems.append(f"{args[0]}: no such script in the repository")
        elif "argparse" in script.read_text():
            shown = script_help(args[0])
            flags = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
            problems += [f"{args[0]} {f}: not in its --help" for f in sorted(flags) if f not in shown]
    return [f"{' '.join(argv)}\n    {p}" for p in problems if p]


@pytest.mark.parametrize("block", PLAN.parses, ids=lambda b: b.where)
def test_the_block_parses_and_names_only_what_exists(block: Block, request: pytest.FixtureRequest) -> None:
    script = block.script()
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, f"{block.where}: bash -n: {syntax.stderr}"
    found = commands(script)
    assert found, f"{block.where}: no command in the block"
    problems = [p for argv in found for p in command_problems(argv)]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)
    counts(request.config).update({"blocks parsed": 1, "commands parsed": len(found)})


# --------------------------------------------------------------------------------------------
# Run: on this machine, in a scratch directory that sees the repository's files


def _run_param(run: Run) -> object:
    marks = [pytest.mark.e2e]
    if run.needs_etcd:
        marks.append(pytest.mark.etcd)
    if run.needs_kube:
        marks.append(pytest.mark.kube)
    return pytest.param(run, id=run.where, marks=marks)


def scratch_dir(tmp_path: Path) -> Path:
    """A working directory where the docs' relative paths (Makefile, hack/, .venv/bin ...) resolve
    to the repository's, and whatever a block writes stays in tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", *GENERATED} or entry.name == "testbin":
            (work / entry.name).symlink_to(entry)
    return work


def run_script(script: str, *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Runs a block with bash -e in a session of its own: stdout and stderr as a terminal shows
    them (into a file: a pipe would wait for whatever the block left in the background), and
    nothing it started (a receiver sent to the background) outlives it."""
    path, log = cwd.parent / "doc-block.sh", cwd.parent / "doc-block.out"
    path.write_text(MAKE_SHIM + script + "\n")
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", str(path)], cwd=cwd, env=env, text=True,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -1, log.read_text() + f"\n(timed out after {RUN_TIMEOUT}s)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    return code, log.read_text()


@pytest.mark.parametrize("run", [_run_param(r) for r in PLAN.runs])
def test_the_block_runs_and_prints_what_the_docs_show(
    run: Run, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    script = run.script
    # A user's shell: none of our variables, and no make of ours around it (`make test` runs
    # this, and a block's `make demo` would say "make[1]: Entering directory" in its output).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REBOOTCOORD_", "KUBECONFIG")) and k not in MAKE_VARIABLES
    }
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(tmp_path)
    work = scratch_dir(tmp_path)
    # The group a demo or an installed agent leaves behind, for rebootctl to look at.
    seed = "rebootctl {} set-max 2 >/dev/null\n"
    if run.needs_etcd:
        endpoint = request.getfixturevalue("etcd").endpoint
        script = seed.format(f"--etcd-endpoints {endpoint}") + script.replace(ETCD_PLACEHOLDER, endpoint)
    if run.needs_kube:
        kube = request.getfixturevalue("kube")
        env["KUBECONFIG"] = str(kube.cluster.kubeconfig)
        where = f"--backend kubernetes -n {kube.namespace}"
        script = seed.format(where) + script.replace(f"-n {KUBE_NAMESPACE}", f"-n {kube.namespace}")
    code, output = run_script(script, cwd=work, env=env)
    tail = "\n".join(output.splitlines()[-40:])
    assert code == run.exit_code, f"{run.where}: exit code {code}, the docs expect {run.exit_code}:\n{tail}"
    for block in run.outputs:
        why = mismatch(block.text, output)
        assert why is None, f"{block.where}: the output shown is not what the program prints: {why}\n{output}"
    counts(request.config).update(
        {"blocks run": 1, "commands run": len(commands(run.script)), "outputs": len(run.outputs)}
    )


# --------------------------------------------------------------------------------------------
# The pattern language and the splitting of commands


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        ("invariants: OK", "invariants: OK", True),
        ("invariants: OK", "invariants: VIOLATED", False),
        ("[   4.1s] rebooted 2/6", "[  12.3s] rebooted 6/6", True),
        ("etcd http://127.0.0.1:43817", "etcd http://127.0.0.1:2379", True),
        ("node-03 done", "node-03 drain", False),
        ("done in 9.8s: ...", "done in 8.5s: 6 reboots on 6 nodes", True),
        ("a\n...\nz", "a\nb\nc\nz", True),
        ("a\n...\nz", "a\nz", True),
        ("a\nz", "a\nb\nz", False),
        ("a", "a\nb", False),
        ("a\n...", "a\nb\nc", True),
        ("  - max_holders: got '0'", "    - max_holders: got '1'", True),
        ("x.y", "xzy", False),
    ],
    ids=[
        "same", "different", "numbers", "ports", "words", "ellipsis-in-line", "ellipsis-lines",
        "ellipsis-none", "extra-line", "trailing-line", "ellipsis-at-end", "blanks", "dot-literal",
    ],
)  # fmt: skip
def test_output_patterns(expected: str, actual: str, ok: bool) -> None:
    assert (mismatch(expected, actual) is None) is ok, line_pattern(expected.splitlines()[0]).pattern


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("make demo   # a comment", [["make", "demo"]]),
        ("FORCE=1 make testbin", [["make", "testbin"]]),
        ("a --x \\\n  --y 'z w'", [["a", "--x", "--y", "z w"]]),
        ("go mod download x >/dev/null 2>&1", [["go", "mod", "download", "x"]]),
        ("python3 r.py & b; kill $!", [["python3", "r.py"], ["b"], ["kill", "$!"]]),
        ("a && b | c", [["a"], ["b"], ["c"]]),
    ],
    ids=["comment", "assignment", "continuation", "redirections", "background", "operators"],
)
def test_commands_of_a_block(script: str, argv: list[list[str]]) -> None:
    assert commands(script) == argv


def test_a_command_naming_what_does_not_exist_is_refused() -> None:
    assert command_problems(["rebootcoord", "simulate", "--nodes", "3"]) == []
    assert command_problems(["rebootctl", "--etcd-endpoints", ETCD_PLACEHOLDER, "status"]) == []
    assert command_problems(["rebootcoord", "simulate", "--no-such-flag"])
    assert command_problems(["rebootctl", "no-such-command"])
    assert command_problems(["make", "no-such-target"])
    assert command_problems(["kubectl", "apply", "-f", "deploy/no-such.yaml"])
    assert command_problems([".venv/bin/python", "benchmarks/no_such.py"])


# --------------------------------------------------------------------------------------------
# What the README says of the program, beside its blocks


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readmes_metrics_table_names_every_metric_and_failure_reason() -> None:
    table = _section((REPO / "README.md").read_text(), "Metrics")
    registry = CollectorRegistry()
    Metrics(registry, node="n", group="g")
    names = [m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()]
    missing = [n for n in [*names, *FAILURE_REASONS] if f"`{n}" not in table and f"`{n}`" not in table]
    assert not missing, f"README.md, Metrics: not in the table: {missing}"


@pytest.mark.parametrize("doc", ["README.md", "docs/development.md"])
def test_a_newcomers_pages_link_only_to_files_in_the_repository(doc: str) -> None:
    path = REPO / doc
    text = path.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert "://" not in target, f"{doc}: links outside the repository: {target}"
        file = (path.parent / target.split("#", 1)[0]).resolve()
        assert file.is_relative_to(REPO) and file.exists(), f"{doc}: {target} is no file of the repository"
