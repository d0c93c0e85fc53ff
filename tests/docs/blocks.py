"""The fenced blocks of README.md and docs/*.md, and the curl requests in their shell blocks."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL = frozenset({"sh", "bash", "console"})
PYTHON = frozenset({"python"})
# Not commands: output samples, diagrams, data. A command in one of these would never run.
INERT = frozenset({"text", "json", "yaml"})

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
EXPECTED = re.compile(r"^\s*#\s*->\s*(\d{3})?")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        """(page, first command line without its comment): how the test's lists name a block."""
        return (self.page, first_command(self))

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def commands(self) -> str:
        """The text to run: a console block's `$ ` lines without the prompt; others as they are."""
        if self.lang != "console":
            return self.text
        lines = [line[2:] for line in self.text.splitlines() if line.startswith("$ ")]
        return "\n".join(lines) + "\n"


def blocks(pages: list[Path] = PAGES) -> list[Block]:
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            lang = match.group(1).strip().split(" ")[0] if match.group(1).strip() else ""
            relative = page.relative_to(ROOT).as_posix()
            found.append(Block(relative, line, lang, match.group(2)))
    return found


def first_command(block: Block) -> str:
    for line in block.commands.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return re.sub(r"\s+# .*$", "", line.strip())  # without a trailing comment
    return ""


def logical_lines(text: str) -> list[str]:
    """Lines joined where a backslash continues them or a single quote is still open."""
    joined: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        if _open_single_quote(pending):
            continue
        joined.append(pending)
        pending = ""
    if pending:
        joined.append(pending)
    return joined


def _open_single_quote(text: str) -> bool:
    quote = None
    for index, char in enumerate(text):
        if quote is None and char == "#" and (index == 0 or text[index - 1] in " \t\n"):
            return False  # the rest is a comment
        if char in "'\"" and (quote is None or quote == char):
            if char == '"' and index and text[index - 1] == "\\":
                continue
            quote = None if quote == char else char
    return quote == "'"


def assignments(block: Block) -> dict[str, str]:
    """`NAME=value` lines of a shell block, their values unquoted."""
    found = {}
    for line in logical_lines(block.commands):
        match = ASSIGNMENT.match(line)
        if match and not match.group(2).startswith("$("):
            try:
                words = shlex.split(match.group(2), comments=True)
            except ValueError:
                continue
            found[match.group(1)] = words[0] if words else ""
    return found


@dataclass(frozen=True)
class Curl:
    block: Block
    line: str  # the logical line, as written
    method: str
    url: str  # with the block's variables substituted where it sets them
    headers: tuple[str, ...]
    body: str | None
    fail_flag: bool  # `-f`: curl's exit status, not an HTTP status, is the check
    expected: int | None  # the status of a `# -> NNN` comment after it; None: any 2xx


def curls(block: Block) -> list[Curl]:
    """Every curl invocation of a shell block, in order, with the status its comment expects."""
    variables = assignments(block)
    lines = logical_lines(block.commands)
    found: list[Curl] = []
    for index, line in enumerate(lines):
        if not re.search(r"(?:^|[\s(])curl\s", line) or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        start = next(i for i, word in enumerate(words) if word.endswith("curl"))
        method, url, headers, body, fail = "GET", "", [], None, False
        args = iter(words[start + 1 :])
        for arg in args:
            if arg in ("|", ";", "&&") or arg.startswith(")"):
                break
            if arg in ("-X", "--request"):
                method = next(args)
            elif arg in ("-H", "--header"):
                headers.append(_expand(next(args), variables))
            elif arg in ("-d", "--data", "--data-binary"):
                body = next(args)
                method = "POST" if method == "GET" else method
            elif arg in ("-o", "-D", "-w", "--output", "--dump-header"):
                next(args)
            elif arg.startswith("-") and not arg.startswith("--"):
                fail = fail or "f" in arg[1:]
                method = "HEAD" if "I" in arg[1:] else method
            elif arg == "--fail":
                fail = True
            elif not arg.startswith("-") and not url:
                url = _expand(arg.rstrip(")"), variables)
        found.append(
            Curl(
                block, line, method, url, tuple(headers), body, fail, _expected(lines[index + 1 :])
            )
        )
    return found


def _expected(after: list[str]) -> int | None:
    for line in after:
        if re.search(r"(?:^|[\s(])curl\s", line) and not line.lstrip().startswith("#"):
            return None
        match = EXPECTED.match(line)
        if match:
            return int(match.group(1)) if match.group(1) else None
    return None


def _expand(text: str, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda match: variables.get(match.group(1), match.group(0)), text)
