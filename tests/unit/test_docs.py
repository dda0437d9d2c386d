"""Every `facemask ...` command line in the README and docs/ names a command and options that exist.

Nothing is run: each line is matched against the CLI's own parser (its commands and their
options), so a renamed or removed option fails here instead of in a reader's terminal.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from facemask.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# `python jobs/X.py ...` takes the options of one command (jobs/*.py call the CLI).
JOBS = {"prepare": "data prepare", "train": "train", "tune": "tune", "evaluate": "evaluate"}


def command_lines(page: Path) -> list[str]:
    """The `facemask` commands inside the page's code blocks and inline code, continuations joined;
    `python jobs/X.py` entrypoints as the command they run."""
    text = re.sub(
        r"python (?:\S*/)?jobs/(prepare|train|tune|evaluate)\.py",
        lambda m: f"facemask {JOBS[m.group(1)]}",
        page.read_text(),
    )
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line for line in joined.splitlines() if re.search(r"(^|\s|=\S+ )facemask \w", line)]
    lines += re.findall(r"`((?:\w+=\S+ )*facemask [a-z][^`]*)`", text)
    return lines


def words(line: str) -> list[str]:
    """The arguments after `facemask`: comments, env settings, pipes and `[a|b]` brackets resolved."""
    line = re.split(r"\s#\s|\s#$", line)[0]
    line = line[line.index("facemask ") + len("facemask ") :]
    line = re.split(r"\s(?:\||&&|;|&)\s?", line)[0]
    line = line.replace("[", " ").replace("]", " ").replace("...", " ")
    try:
        parts = shlex.split(line)
    except ValueError:
        parts = line.split()
    return [p.split("|")[0] for p in parts]


def unknown_options(args: list[str]) -> list[str]:
    command: click.Command = main
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        if sub is None:
            return [f"no command {args[0]!r}"]
        command, args = sub, args[1:]
    known = {
        opt for param in command.params for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    }
    known |= {"--help", "-v", "--verbose"}
    return [
        a for a in args if a.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", a) and a.split("=")[0] not in known
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_parses(page):
    lines = command_lines(page)
    bad = {line: problems for line in lines if (problems := unknown_options(words(line)))}
    assert not bad, bad


def test_the_check_catches_a_wrong_option_and_a_wrong_command():
    assert unknown_options(words("facemask train --data d.yaml --epoch 5")) == ["--epoch"]
    assert unknown_options(words("facemask trian --data d.yaml")) == ["no command 'trian'"]
    assert (
        unknown_options(words("MLFLOW_TRACKING_URI=x facemask data prepare --source a --out b [--engine auto|ray]"))
        == []
    )
    assert len(command_lines(ROOT / "README.md")) >= 10
    jobs = command_lines(ROOT / "docs" / "jobs-and-clusters.md")
    assert any(words(line)[:2] == ["data", "prepare"] and "--source" in words(line) for line in jobs)
