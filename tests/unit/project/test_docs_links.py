"""The docs point at things that exist: every link and its anchor, every repository path named in
inline code. A renamed file, a moved heading or a deleted module fails here, not in a reader's
browser. Each check is also run once on a page made to be wrong, to see that it can fail."""

from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders whose paths the docs name in inline code (`facemask/training/train.py`, `jobs/benchmarks/x.py`).
TREE = ("facemask/", "jobs/", "tests/", "docs/", "kubernetes/", "serve/", "dashboards/", ".ci/")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and spaces dropped,
    spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found | set(re.findall(r'<a (?:name|id)="([^"]+)"', text))


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Each link of `page` (or of `text`, read as if it were there) to a file that is missing, or to
    an anchor its target page lacks."""
    text = page.read_text() if text is None else text
    broken = []
    for groups in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
        target = groups[0] or groups[1]
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if path and not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text() if path else text):
            broken.append(f"{target}: {file.name} has no heading with the anchor #{anchor}")
    return broken


@functools.cache
def ignored_patterns() -> tuple[str, ...]:
    return tuple(p.strip() for p in (ROOT / ".gitignore").read_text().splitlines() if p.strip() and p[0] != "#")


def generated(path: str) -> bool:
    """A path .gitignore keeps out of the repository: a run's output, which a page may name."""
    patterns = ignored_patterns()
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.rstrip("/")) or fnmatch.fnmatch(parts[-1], pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def missing_paths(text: str) -> list[str]:
    """Repository paths named in inline code that do not exist (globs, placeholders and run outputs skipped)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    missing = []
    for code in re.findall(r"`([^`\n]+)`", text):
        for word in code.split():
            path = word.strip("\"',;:()").split(":")[0].split("#")[0]
            if not path.startswith(TREE) or any(c in path for c in "*<>{}$…") or path.endswith("..."):
                continue
            if not (ROOT / path).exists() and not generated(path):
                missing.append(path)
    return sorted(set(missing))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(page):
    assert not broken_links(page), broken_links(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_the_docs_name_exists(page):
    assert not missing_paths(page.read_text()), missing_paths(page.read_text())


def test_the_checks_catch_a_broken_link_a_missing_anchor_and_a_missing_path():
    text = (
        "# A page\n\n## Capacity planning\n\n"
        "[fine](#capacity-planning) [gone](missing.md) [no such heading](performance.md#no-such-heading)\n"
        "[here](#nowhere) [fine too](performance.md)\n"
        "`facemask/no_such_module.py`, `jobs/benchmarks/benchmark_train.py`\n"
    )
    assert broken_links(ROOT / "docs" / "a-page.md", text) == [
        "missing.md: no file docs/missing.md",
        "performance.md#no-such-heading: performance.md has no heading with the anchor #no-such-heading",
        "#nowhere: a-page.md has no heading with the anchor #nowhere",
    ]
    assert missing_paths(text) == ["facemask/no_such_module.py"]


def test_anchors_follow_githubs_rules():
    assert slug("Capacity planning") == "capacity-planning"
    assert slug("The `--workers` option, and *why*") == "the---workers-option-and-why"
    assert slug("Raw model calls on a GPU (H100)") == "raw-model-calls-on-a-gpu-h100"


def test_the_readme_names_every_system_package_ci_installs():
    """The README's install line for the suite's Debian packages is the list `.ci/run` checks."""
    ci = (ROOT / ".ci" / "run").read_text()
    packages = set(re.findall(r"missing\+=\(([\w.+-]+)\)", ci))
    packages |= set(re.search(r"for package in (.*?); do", ci, re.S).group(1).replace("\\\n", " ").split())
    readme = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    listed = set(re.search(r"apt-get install -y ([^\n`]+)", readme).group(1).split())
    assert packages and packages == listed, f"only in .ci/run: {packages - listed}; only in README: {listed - packages}"


def option_defaults() -> dict[str, set[str]]:
    """Every option of every facemask command -> the defaults it has (as text), across commands."""
    import click

    from facemask.cli import main

    found: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        for param in command.params:
            default = param.default() if callable(param.default) else param.default
            for opt in getattr(param, "opts", []):
                found.setdefault(opt, set()).add(str(default))
        if isinstance(command, click.Group):
            for name in command.list_commands(click.Context(command)):
                walk(command.get_command(click.Context(command), name))

    walk(main)
    return found


# "`--window-s`, default 60", "`--page-timeout-s` (default 10 s", "`--x` (default `a,b`)"
STATED = re.compile(r"`(--[a-z][\w-]*)`(?:/`--[\w-]+`)?[,(\s]+default:? (?:`([^`]+)`|([^\s,;)]+))")


def wrong_defaults(text: str, defaults: dict[str, set[str]]) -> list[str]:
    wrong = []
    for option, quoted, bare in STATED.findall(text):
        stated = quoted or bare.rstrip(":.")
        actual = defaults.get(option)
        same = {stated, str(float(stated)) if re.fullmatch(r"\d+", stated) else stated}
        if actual is None:
            wrong.append(f"{option}: no facemask command has it")
        elif not (same & actual or ("://" in stated and any(a in stated for a in actual))):
            wrong.append(f"{option}: the docs say default {stated}, the code's is {' or '.join(sorted(actual))}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_default_the_docs_state_is_the_codes(page):
    assert not wrong_defaults(page.read_text(), option_defaults())


def test_the_default_check_catches_a_wrong_default():
    defaults = option_defaults()
    assert wrong_defaults("(`--window-s`, default 60)", defaults) == []
    assert wrong_defaults("(`--window-s`, default 45)", defaults) == [
        "--window-s: the docs say default 45, the code's is 60.0"
    ]
    unknown = wrong_defaults("`--no-such-option` (default 3)", defaults)
    assert unknown == ["--no-such-option: no facemask command has it"]
    assert wrong_defaults("`--host`/`--port` (default http://0.0.0.0:8010/)", defaults) == [
        "--host: the docs say default http://0.0.0.0:8010/, the code's is 127.0.0.1"
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_command_in_the_docs_reads_data_a_users_clone_lacks(page):
    """A reader reproduces a figure with data they can get (`facemask data fetch`); the development
    machines' ../shared copy is named only where the docs say which tests read it and skip."""
    sentences = re.split(r"(?<=[.!?])\s", re.sub(r"\s+", " ", page.read_text()))
    wrong = [s for s in sentences if "../shared" in s and "skip" not in s]
    assert not wrong, wrong


def test_the_layout_page_lists_every_module_in_its_package():
    """docs/layout.md's tree names each module under its own package's folder, so it cannot go stale."""
    tree = (ROOT / "docs" / "layout.md").read_text().split("```")[1]
    folders: list[str] = []  # the folder path at each indentation level of the tree
    listed = set()
    for line in tree.splitlines():
        match = re.match(r"(\s*)(\S+)", line)
        if not match or not re.fullmatch(r"[\w.]+/?|[\w, ]+", match.group(2)):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        elif name.endswith(".py"):
            listed.add("".join(folders) + name)
    package = ROOT / "facemask"
    modules = {
        f"facemask/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if p.name != "__init__.py" and p.parent.name not in ("cli", "compat") and "__pycache__" not in p.parts
    }
    assert not modules - listed, f"docs/layout.md lacks {sorted(modules - listed)}"
    assert not listed - modules - {"facemask/__init__.py"}, f"docs/layout.md lists {sorted(listed - modules)}"
