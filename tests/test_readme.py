"""The README and docs/cli.md say only what is true of the command line: every link leads to a file, and every
``stereo-spot`` line in their code blocks names a real command with options it has. The README keeps its order
for a newcomer: start, use, pointers, then architecture and development.

What the tests catch: a section moved to docs/ with a link left behind, an option renamed or removed without the
README, a command that does not exist (``stereo-spot model list``), the architecture record dropped from the
README.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from stereo_spot.cli.main import app

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_PAGES = [REPO / "README.md", REPO / "docs" / "cli.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def code_lines(page: Path) -> list[str]:
    """The lines of the page's fenced code blocks."""
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def stereo_spot_calls(page: Path) -> list[str]:
    """Each ``stereo-spot …`` (or ``.venv/bin/stereo-spot …``) call in the page's code blocks, without comments,
    and in its inline code (`` `stereo-spot jobs` ``)."""
    calls = []
    inline = re.findall(r"`((?:\.venv/bin/)?stereo-spot [a-z-][^`]*)`", page.read_text())
    for line in [*code_lines(page), *inline]:
        for part in re.split(r"&&|;", line.split(" #")[0]):
            part = part.strip()
            for prefix in (".venv/bin/stereo-spot ", "stereo-spot "):
                if part.startswith(prefix):
                    calls.append(part[len(prefix):])
    return calls


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def _is_group(command) -> bool:
    return hasattr(command, "list_commands")  # typer carries its own click: duck-typed, not isinstance


def _command(words: list[str]):
    """The (sub)command the words name, and the words after it."""
    command = typer.main.get_command(app)
    words = list(words)
    while words and words[0] in ("-v", "-vv", "-q", "--verbose", "--quiet"):  # the level, before the command
        words.pop(0)
    while _is_group(command) and words and not words[0].startswith("-"):
        found = command.get_command(command.context_class(command), words[0])
        if found is None:
            break
        command = found
        words.pop(0)
    return command, words


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: p.name)
def test_every_command_line_names_a_real_command_and_its_options(page):
    calls = stereo_spot_calls(page)
    assert calls, page
    for call in calls:
        words = shlex.split(call.replace("[", " ").replace("]", " "))
        command, rest = _command(words)
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        # a group only with its own options (`stereo-spot --install-completion`) or a placeholder for its
        # command (`stereo-spot step <name>`)
        placeholder = bool(rest) and (rest[0].startswith("<") or rest[0].isupper())
        assert not _is_group(command) or placeholder or (rest and all(word in known for word in rest)), \
            f"{page.name}: `stereo-spot {call}` names no command"
        known |= {"--verbose", "--quiet", "--version", "--help"}
        for option in OPTION.findall(" ".join(rest)):
            assert option in known, f"{page.name}: `stereo-spot {call}`: {command.name} has no {option}"


def test_the_readme_reads_top_down_and_keeps_its_architecture_record():
    text = (REPO / "README.md").read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    order = ["Start here", "Using it", "Documentation", "Architecture", "Development"]
    assert [h for h in headings if h in order] == order, headings
    assert "source .venv/bin/activate" in text and "Python 3.11" in text
    ui = next(line for line in code_lines(REPO / "README.md") if line.startswith("stereo-spot ui "))
    assert "sign-in:" not in ui  # the local app has no sign-in; docs/app.md covers a shared server
