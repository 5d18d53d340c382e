"""The README and docs/ hold together: every relative link resolves to a file (and a heading, when
it names an anchor), and every `ponder ...` command a page shows, in a code block or in inline
code, is one the command line accepts (parsed with ponder.cli's parser, never run).

How a page's command is read: `[...]` marks an optional part (kept), `a|b` alternatives (each one
tried), `x ...` inside brackets a repetition (dropped); a bare `...` elides the rest, so only the
options given are checked against the command. Placeholders in capitals (DIR, N, NAME) stand for
any value; `ponder CMD` with no arguments names a command."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ponder.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,}|~{3,})(.*?)$(.*?)^\1\s*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
NOT_SHELL = {"python", "py", "json", "yaml", "yml", "jinja", "text"}


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The page's prose with every fenced block blanked (line count kept), and the blocks as
    (language, body)."""
    blocks = []

    def blank(m: re.Match) -> str:
        blocks.append((m.group(2).strip().lower(), m.group(3)))
        return "\n" * m.group(0).count("\n")

    return FENCE.sub(blank, text), blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    prose = INLINE.sub("", prose)
    return [m.group(1) for m in LINK.finditer(prose)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


# ---------------------------------------------------------------- commands

def shown_commands(path: Path) -> list[str]:
    """Every `ponder ...` command on a page: lines of shell code blocks (continuations joined,
    comments cut, `torchrun ... -m ponder` included) and inline code that starts with `ponder `."""
    prose, blocks = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for lang, body in blocks:
        if lang in NOT_SHELL:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line)
            m = re.search(r"(?:^|\s|/)(?:-m\s+)?ponder\s+(?=[a-z-])(.*)$", line)
            if m:
                found.append("ponder " + m.group(1).strip())
    for m in INLINE.finditer(prose):
        code = " ".join(m.group(2).split())
        if re.match(r"ponder(\s|$)", code) and "error:" not in code:
            found.append(code)
        elif (t := re.search(r"-m ponder (.*)$", code)):
            found.append("ponder " + t.group(1))
    return found


def variants(command: str) -> list[list[str]]:
    """The token lists a synopsis stands for: each alternative of `a|b` once, optional parts kept."""
    text = command.replace("\\|", "|").replace('"..."', "TEXT")
    text = re.sub(r"\s*\.\.\.\s*\]", "]", text)  # [key=value ...]: a repetition
    tokens = [t for t in shlex.split(text.replace("[", " ").replace("]", " "))[1:]]
    choices = [t.split("|") if "|" in t and not t.startswith("|") else [t] for t in tokens]
    width = max((len(c) for c in choices), default=1)
    return [[c[min(i, len(c) - 1)] for c in choices] for i in range(width)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def problem(tokens: list[str], parser: argparse.ArgumentParser) -> str | None:
    """Why `ponder TOKENS` is not a command the parser accepts, or None."""
    tokens = ["1" if PLACEHOLDER.fullmatch(t) else t for t in tokens]
    node, depth = parser, 0
    while depth < len(tokens) and tokens[depth] in _subparsers(node):
        node, depth = _subparsers(node)[tokens[depth]], depth + 1
    rest = tokens[depth:]
    if rest and not rest[0].startswith("-") and _subparsers(node) and rest[0] != "...":
        return f"{rest[0]!r} is not a command of `{' '.join(['ponder', *tokens[:depth]])}`"
    if not rest or "-h" in rest or "--help" in rest:
        return None  # the command's name, or its help
    if "..." in rest:  # elided: the options given must exist there
        unknown = [t.split("=")[0] for t in rest if t.startswith("-") and t.split("=")[0] not in node._option_string_actions]
        return f"unknown options {unknown}" if unknown else None
    try:
        parser.parse_args(tokens)
    except SystemExit:
        return "the parser refuses it"
    return None


COMMANDS = [(page, command) for page in PAGES for command in shown_commands(page)]


def test_pages_show_commands():
    assert len(COMMANDS) > 50
    assert any("ponder demo" in c for _, c in COMMANDS)


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_every_relative_link_resolves(page):
    assert not broken_links(page)


def test_broken_links_and_anchors_are_found(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n\n## `code` and *more*: yes\n\nsee [b](b.md), [c](a.md#nope), "
                                   "[ok](a.md#code-and-more-yes), [top](#title-here), [web](https://x.y)\n"
                                   "```\n[not a link](missing.md)\n```\n")
    assert [b.split(":")[0] for b in broken_links(tmp_path / "a.md")] == ["b.md", "a.md#nope"]


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{_ids(p)}: {c}"[:120] for p, c in COMMANDS])
def test_every_shown_command_parses(page, command, capsys):
    parser = build_parser()
    problems = [(v, why) for v in variants(command) if (why := problem(v, parser))]
    capsys.readouterr()
    assert not problems, f"{_ids(page)}: `{command}`: {problems}"


def test_a_wrong_command_is_caught():
    parser = build_parser()
    assert problem(["eval", "--model", "DIR"], parser)                  # --task is required
    assert problem(["train", "rl", "CONFIG.yaml", "--lr", "1"], parser)  # no such option
    assert problem(["evaluate"], parser)                                  # no such command
    assert problem(["eval", "...", "--strategies", "x"], parser)         # elided, but no such option
    assert problem(["eval", "--model", "DIR", "--task", "NAME"], parser) is None
    assert [v[:2] for v in variants("ponder train sft|rl CONFIG.yaml [key=value ...]")] == [["train", "sft"], ["train", "rl"]]
