"""The fenced blocks of README.md and docs/*.md, their doc-test markers, what a block's commands
are, and the output pattern language (docs/development.md, "The docs test"). Pure: reads files,
runs nothing.

A marker is an HTML comment on the last non-blank line before a fence::

    <!-- doc-test: run -->             run the block (bash -e); it must exit 0
    <!-- doc-test: run, exit 2 -->     ... and exit 2
    <!-- doc-test: parse -->           for a real cluster or root: bash -n, and every command named
                                       must exist (rebootcoord/rebootctl flags, make targets, ...)
    <!-- doc-test: output -->          this block is the output of the file's last run block
    <!-- doc-test: output of CMD -->   this block is the output of CMD, run as a block of its own

Every sh/shell/bash/console block carries run or parse; an output marker may stand before a block
of any kind (usually a fence without a language).
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGS = frozenset({"sh", "shell", "bash", "console"})
MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)")
_RUN = re.compile(r"^run(?:,\s*exit\s+(?P<code>\d+))?$")
_OUTPUT = re.compile(r"^output(?:\s+of\s+(?P<command>.+))?$")

#: What the runner replaces in a run block: the endpoint of the test's etcd.
ETCD_PLACEHOLDER = "http://127.0.0.1:PORT"
#: The namespace the README installs into; in a run block, ``-n rebootcoord`` becomes the test's own.
KUBE_NAMESPACE = "rebootcoord"
#: Words that make a run block need the Kubernetes test control plane ($KUBECONFIG set to it).
KUBE_WORDS = ("--backend kubernetes", "kubectl ", "helm ")


#: What the docs test did in this session, for its closing line (tests/docs/conftest.py).
DOCS_COUNTS = pytest.StashKey[Counter[str]]()


def summary_line(c: Counter[str]) -> str:
    return (
        f"docs test: {c['commands run']} documented commands run ({c['blocks run']} blocks), "
        f"{c['outputs']} outputs checked, "
        f"{c['commands parsed']} commands parsed ({c['blocks parsed']} blocks)"
    )


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    marker: str | None  # the marker's body ("run", "parse", "output of ..."), None: unmarked

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    def script(self) -> str:
        """The block as a shell script (a console block: its ``$ `` lines)."""
        if self.lang != "console":
            return self.text
        return "\n".join(line[2:] for line in self.text.splitlines() if line.startswith("$ "))


def _dedent(line: str, indent: int) -> str:
    """A fenced line without its fence's indentation (a block inside a list item)."""
    return line[indent:] if not line[:indent].strip() else line.lstrip()


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = "\n".join(_dedent(line, indent) for line in lines[i + 1 : end])
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        blocks.append(
            Block(str(path.relative_to(REPO)), i + 1, m["lang"], body, marker["body"] if marker else None)
        )
        i = end + 1
    return blocks


@dataclass
class Run:
    """One thing the runner executes: a run block, or the command of an ``output of`` marker, with
    the output blocks that must match what it prints."""

    where: str
    script: str
    exit_code: int = 0
    outputs: list[Block] = field(default_factory=list)

    @property
    def needs_etcd(self) -> bool:
        return ETCD_PLACEHOLDER in self.script

    @property
    def needs_kube(self) -> bool:
        return any(word in self.script for word in KUBE_WORDS)


@dataclass
class Plan:
    runs: list[Run] = field(default_factory=list)
    parses: list[Block] = field(default_factory=list)  # every run and parse block
    problems: list[str] = field(default_factory=list)  # unmarked or ill-marked blocks


def plan(files: list[Path]) -> Plan:
    result = Plan()
    for path in files:
        last: Run | None = None
        by_command: dict[str, Run] = {}
        for block in read_blocks(path):
            if block.marker is None:
                if block.is_shell:
                    result.problems.append(
                        f"{block.where}: a ```{block.lang} block without a doc-test marker "
                        "(<!-- doc-test: run --> or <!-- doc-test: parse --> on the line before)"
                    )
                continue
            run, output = _RUN.match(block.marker), _OUTPUT.match(block.marker)
            if block.marker == "parse" or run:
                if not block.is_shell:
                    result.problems.append(f"{block.where}: {block.marker!r} marks a ```{block.lang} block")
                    continue
                result.parses.append(block)
                if run:
                    last = Run(block.where, block.script(), int(run["code"] or 0))
                    result.runs.append(last)
            elif output and output["command"]:
                command = output["command"]
                if command not in by_command:
                    by_command[command] = Run(f"{block.where} (output of)", command)
                    result.runs.append(by_command[command])
                by_command[command].outputs.append(block)
            elif output:
                if last is None:
                    result.problems.append(f"{block.where}: 'output' with no run block before it")
                else:
                    last.outputs.append(block)
            else:
                result.problems.append(f"{block.where}: unknown doc-test marker {block.marker!r}")
    return result


# --------------------------------------------------------------------------------------------
# Output patterns


def line_pattern(expected: str) -> re.Pattern[str]:
    """A line of an expected output as a regular expression: ``...`` is any text, a number any
    number, a run of blanks any run of blanks; the rest is literal."""
    parts: list[str] = []
    for token in re.findall(r"\.\.\.|\d+(?:\.\d+)?|\s+|[^\d\s.]+|\.", expected.rstrip()):
        if token == "...":
            parts.append(".*?")
        elif token[0].isdigit():
            parts.append(r"\d+(?:\.\d+)?")
        elif token.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def mismatch(expected: str, actual: str) -> str | None:
    """None when ``actual`` (the whole output) matches the block ``expected``, else why not. A line
    that is only ``...`` stands for any number of lines, none included."""
    want = expected.splitlines()
    got = [line.rstrip() for line in actual.splitlines()]
    pats = [None if w.strip() == "..." else line_pattern(w) for w in want]
    seen: dict[tuple[int, int], bool] = {}
    best = [0]  # the furthest expected line reached, for the message

    def match(i: int, j: int) -> bool:
        key = (i, j)
        if key in seen:
            return seen[key]
        best[0] = max(best[0], i)
        pat = pats[i] if i < len(pats) else None
        if i == len(pats):
            ok = j == len(got)
        elif pat is None:
            ok = match(i + 1, j) or (j < len(got) and match(i, j + 1))
        else:
            ok = j < len(got) and pat.fullmatch(got[j]) is not None and match(i + 1, j + 1)
        seen[key] = ok
        return ok

    if match(0, 0):
        return None
    stuck = best[0]
    line = want[stuck] if stuck < len(want) else "(the end of the output)"
    return f"no match for expected line {stuck + 1}: {line!r}"


# --------------------------------------------------------------------------------------------
# Commands of a block


_OPERATORS = {";", "&", "&&", "|", "||", "(", ")", "{", "}", ";;", "|&"}
_REDIRECT = re.compile(r"^\d*(?:<|>|>>|>&|<&|&>)$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands(script: str) -> list[list[str]]:
    """The simple commands of a script, as argv lists: comments, leading ``VAR=value`` words,
    redirections and control operators left out. Enough for the docs' blocks, not a shell."""
    found: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        argv: list[str] = []
        skip_next = False
        for token in lexer:
            if skip_next:
                skip_next = False
                continue
            if token in _OPERATORS:
                if argv:
                    found.append(argv)
                argv = []
            elif _REDIRECT.match(token) or set(token) <= set("<>&"):
                skip_next = True
                if argv and argv[-1].isdigit():  # 2>... : the 2 was the fd
                    argv.pop()
            elif not argv and _ASSIGNMENT.match(token):
                continue
            else:
                argv.append(token)
        if argv:
            found.append(argv)
    return found
