"""The CLI's contract with scripts: --json on every command with a result, documented exit codes,
--version, one name per idea with the former names still accepted for a release."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from facemask import __version__
from facemask.cli import EXIT_FAILURE, EXIT_NEGATIVE, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[3]
# `serve` runs until stopped: its result is the endpoint, not an answer.
NO_RESULT = {"serve"}


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    out = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out |= commands(command, f"{prefix}{name} ")
        else:
            out[f"{prefix}{name}"] = command
    return out


def options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def test_every_command_with_a_result_has_json_and_docs_cli_shows_its_shape():
    page = (ROOT / "docs" / "cli.md").read_text()
    for name, command in commands().items():
        if name in NO_RESULT:
            continue
        assert "--json" in options(command), f"facemask {name} has no --json"
        assert f"### `facemask {name} --json`" in page, f"docs/cli.md does not show the shape of `{name} --json`"


def test_the_exit_codes_are_the_documented_ones():
    page = (ROOT / "docs" / "cli.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", page, re.M))
    assert {EXIT_FAILURE, EXIT_USAGE, EXIT_NEGATIVE, 130, 143} <= {int(k) for k in table}, table
    assert "--exit-code" in table[str(EXIT_NEGATIVE)]


def test_version_and_completion():
    run = CliRunner().invoke(main, ["--version"])
    assert run.exit_code == 0 and run.output == f"facemask, version {__version__}\n"
    # Click's own completion, which docs/cli.md tells users to install.
    run = CliRunner().invoke(main, [], prog_name="facemask", env={"_FACEMASK_COMPLETE": "bash_source"})
    assert run.exit_code == 0 and "_FACEMASK_COMPLETE=bash_complete" in run.output
    assert "_FACEMASK_COMPLETE=bash_source facemask" in (ROOT / "docs" / "cli.md").read_text()


@pytest.mark.parametrize(
    "former, new, args",
    [
        ("--model", "--weights", ["train", "--data", "{data}", "--model", "nowhere.pt"]),
        ("--model", "--weights", ["tune", "--data", "{data}", "--model", "nowhere.pt"]),
        ("--batch-size", "--batch", ["predict", "{tmp}/none", "--out", "{tmp}/o", "--batch-size", "3"]),
        ("--confidence", "--level", ["promote", "--model-uri", "models:/x/1", "--confidence", "1.5"]),
        (
            "--model",
            "--model-version",
            ["query", "{data}", "--model", "3", "--url", "http://127.0.0.1:9", "--deadline", "1"],
        ),
    ],
)
def test_former_option_names_still_work_and_say_the_new_one(former, new, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.yaml"
    data.write_text("names: [with_mask]\n")
    command = commands()[args[0]]
    assert new in options(command) and options(command)[former].hidden
    assert not re.search(rf"(?<![\w-]){re.escape(former)}(?![\w-])", command.get_help(click.Context(command)))
    run = CliRunner().invoke(main, [a.format(data=data, tmp=tmp_path) for a in args])
    assert f"note: {former} is now {new}" in run.stderr, run.output
    assert run.exit_code in (EXIT_FAILURE, EXIT_USAGE) and "internal error" not in run.output, run.output


def test_the_value_given_under_a_former_name_is_the_one_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.yaml"
    data.write_text("names: [with_mask]\n")
    run = CliRunner().invoke(main, ["train", "--data", str(data), "--model", "nowhere.pt"])
    assert "nowhere.pt is not on this machine" in run.stderr and "--weights nowhere.yaml" in run.stderr
    run = CliRunner().invoke(main, ["promote", "--model-uri", "models:/x/1", "--confidence", "1.5"])
    assert "--level 1.5: a level between 0 and 1" in run.stderr, run.output
