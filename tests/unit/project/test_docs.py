"""Every command line in the README, docs/, jobs/ scripts and the manifests names a command
and options that exist: `facemask ...` against the CLI's own parser, `python jobs/...py` against
the script's own `--help`.

Nothing is run but `--help`, so a renamed or removed option fails here instead of in a
reader's terminal or a GPU machine's one run.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from facemask.cli import main

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files that are programs: every line of them is a command, not only their code blocks.
SCRIPTS = [
    *sorted((ROOT / "jobs").rglob("*.sh")),
    ROOT / "cluster.yaml",
    *sorted((ROOT / "kubernetes").glob("*.yaml")),
    ROOT / "serve" / "config.yaml",
    ROOT / "Makefile",
]


# `python jobs/X.py ...` takes the options of one command (jobs/*.py call the CLI).
JOBS = {"prepare": "data prepare", "train": "train", "tune": "tune", "evaluate": "evaluate", "watch": "watch"}


def command_lines(page: Path) -> list[str]:
    """The `facemask` commands inside the page's code blocks and inline code, continuations joined;
    `python jobs/X.py` entrypoints as the command they run."""
    text = re.sub(
        r"python (?:\S*/)?jobs/(prepare|train|tune|evaluate|watch)\.py",
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


def script_text(path: Path) -> str:
    """A program's text with continuations joined; a YAML file's folded and block strings as one line each."""
    text = path.read_text()
    if path.suffix == ".yaml":
        import yaml

        strings: list[str] = []

        def walk(node) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, str):
                strings.append(" ".join(node.replace("\\\n", " ").split()))

        for document in yaml.safe_load_all(text):
            walk(document)
        return "\n".join(strings)
    return re.sub(r"\\\n\s*", " ", text)


def facemask_lines(text: str) -> list[str]:
    """Lines that run a facemask command (a word `facemask` then one of its commands), not comments."""
    command = re.compile(rf"(^|[\s\"(;&|])facemask ({'|'.join(main.commands)})\b")
    return [line for line in text.splitlines() if command.search(line) and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_facemask_command_in_a_script_or_manifest_parses(script):
    bad = {}
    for line in facemask_lines(script_text(script)):
        problems = unknown_options(words(line[line.index("facemask ") :]))
        if problems:
            bad[line] = problems
    assert not bad, bad


JOB = re.compile(r"python3? \S*?(jobs/[\w/]+\.py)((?:[ \t]+(?![|&;>]|#)\S+)*)")


@functools.cache
def script_options(script: str) -> frozenset[str]:
    """The options a jobs/ script's argparse accepts, read from its own --help."""
    run = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{script} --help: {run.stderr[-500:]}"
    return frozenset(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", run.stdout))


def job_problems(script: str, args: str) -> list[str]:
    """Unknown options of one `python jobs/X.py ARGS` line: the CLI's for the thin entrypoints,
    the script's own --help for the rest."""
    parts = [p.strip("\"'") for p in shlex.split(args.replace("[", " ").replace("]", " "), comments=True)]
    cli = {
        "jobs/prepare.py": "data prepare",
        "jobs/train.py": "train",
        "jobs/tune.py": "tune",
        "jobs/evaluate.py": "evaluate",
    }
    if script in cli:
        return unknown_options([*cli[script].split(), *parts])
    if script == "jobs/study.py":  # prepare's options, then -- and tune's
        prepare, _, tune = " ".join(parts).partition(" -- ")
        return unknown_options(["data", "prepare", *prepare.split()]) + unknown_options(["tune", *tune.split()])
    known = script_options(script) | {"--help", "-h"}
    train: list[str] = []
    if script == "jobs/retrain.py":  # its own options, then -- and train's
        own, _, after = " ".join(parts).partition(" -- ")
        parts, train = own.split(), unknown_options(["train", *after.split()])
    return train + [
        p for p in parts if p.startswith("-") and p.split("=")[0] not in known and not re.fullmatch(r"-?\d+(\.\d+)?", p)
    ]


@pytest.mark.parametrize("path", PAGES + SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_jobs_script_line_uses_options_its_script_has(path):
    text = script_text(path) if path in SCRIPTS else path.read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    bad = {}
    for match in JOB.finditer(text):
        script, args = match.group(1), match.group(2)
        if problems := job_problems(script, args):
            bad[match.group(0)] = problems
    assert not bad, bad


def test_the_script_check_catches_a_wrong_benchmark_option():
    assert job_problems("jobs/benchmarks/benchmark_serve.py", " --requests 256 --seconds 5") == ["--requests"]
    assert job_problems("jobs/study.py", " --source a --out b -- --model-uri x --trials 2") == ["--model-uri"]
    assert job_problems("jobs/retrain.py", " --base a --labelled b --out c -- --trials 2") == ["--trials"]


# A figure with its interval, "0.486 [0.403, 0.595]": the interval identifies the figure, so
# the same interval beside two different values (or a value and its lower bound beside two
# upper bounds) is a figure retyped wrong in one place.
FIGURE = re.compile(r"(?<![\w.])([+−-]?\d+\.\d+) \[([+−-]?\d+\.\d+), ([+−-]?\d+\.\d+)\]")
FIGURE_FILES = [
    *PAGES,
    ROOT / "serve" / "config.yaml",
    ROOT / "cluster.yaml",
    *sorted((ROOT / "facemask").rglob("*.py")),
]


def figure_conflicts(texts: dict[str, str]) -> list[str]:
    by_interval: dict[tuple, set] = {}
    by_start: dict[tuple, set] = {}
    for name, text in texts.items():
        for value, low, high in FIGURE.findall(text.replace("−", "-")):
            by_interval.setdefault((low, high), set()).add((value, name))
            if abs(float(value)) >= 0.05:  # near 0, different figures share a value and a bound
                by_start.setdefault((value, low), set()).add((high, name))
    out = []
    for (low, high), seen in by_interval.items():
        if len({v for v, _ in seen}) > 1:
            out.append(f"[{low}, {high}] beside {sorted(seen)}")
    for (value, low), seen in by_start.items():
        if len({h for h, _ in seen}) > 1:
            out.append(f"{value} [{low}, ...] ends differently: {sorted(seen)}")
    return out


def test_a_figure_written_twice_has_one_value():
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in FIGURE_FILES}
    assert figure_conflicts(texts) == []
    retyped = {"a.md": "mAP50 0.486 [0.403, 0.595]", "b.md": "scored 0.468 [0.403, 0.595] mAP50"}
    assert len(figure_conflicts(retyped)) == 1
