"""The package's internal import graph, read from the source: no cycles, leaves stay leaves.

Imports inside functions count too, so a cycle cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "facemask"
# Modules every stage may import; they import nothing of ours but each other (in this order).
LEAVES = (
    "facemask.core.classes",
    "facemask.core.operating_point",
    "facemask.core.errors",
    "facemask.compat",
    "facemask.compat.ray",
    "facemask.compat.ultralytics",
    "facemask.compat.mlflow",
    "facemask.compat.uvicorn",
    "facemask.compat.onnxruntime",
    "facemask.core.modelref",
    "facemask.core.lifecycle",
    "facemask.core.ports",
    "facemask.core.runtime",
    "facemask.core.manifest",
    "facemask.core.settings",
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (functions included)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from facemask.x import y` imports facemask.x, or the submodule facemask.x.y.
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != root.name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_only_earlier_leaves(leaf: str) -> None:
    allowed = set(LEAVES[: LEAVES.index(leaf)])
    imported = import_graph(PACKAGE)[leaf]
    assert imported <= allowed, f"{leaf} imports {sorted(imported - allowed)}; a leaf may import only {sorted(allowed)}"


# The stages in the order imports read: a package imports only itself and the ones before it.
# core and compat are one layer, ordered module by module by LEAVES.
STAGES = (
    ("core", "compat"),
    ("data",),
    ("tracking",),
    ("detection",),
    ("events",),
    ("learning",),
    ("quality",),
    ("training",),
)
STAGES += (("serving",), ("video",), ("cli",))
# What facemask/ holds: the stages and nothing else (the pages live in serving/web, the study's files in
# training/configs).
TOP_LEVEL = {name for layer in STAGES for name in layer} | {"__init__.py"}


def out_of_order(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a later stage's module, or of or from a module outside every stage."""
    rank = {name: i for i, layer in enumerate(STAGES) for name in layer}

    def stage(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    wrong = []
    for module, imported in graph.items():
        for target in imported:
            a, b = stage(module), stage(target)
            if a != b and (a not in rank or b not in rank or rank[b] > rank[a]):
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def test_each_stage_imports_only_the_stages_before_it() -> None:
    assert out_of_order(import_graph(PACKAGE)) == []


def test_the_order_check_sees_a_stage_importing_a_later_one(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    for folder, source in {"core": "", "data": "from pkg.core import x\n", "serving": "", "quality": ""}.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
        (pkg / folder / "mod.py").write_text(source)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "x.py").write_text("")
    assert out_of_order(import_graph(pkg)) == []
    (pkg / "quality" / "mod.py").write_text("def late():\n    from pkg.serving import mod\n")
    assert out_of_order(import_graph(pkg)) == ["pkg.quality.mod imports pkg.serving.mod"]


def test_the_top_level_holds_only_the_stages() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == TOP_LEVEL, f"not a stage: {sorted(entries - TOP_LEVEL)}; missing: {sorted(TOP_LEVEL - entries)}"


# Test folders that mirror no package: the repository as a whole (its layout, docs and the suite's
# own tools), and the cluster manifests (cluster.yaml, kubernetes/) run as their runners run them.
TEST_FOLDERS_BEYOND_PACKAGES = {"project", "deploy"}
TEST_FILE_LINES = 500


def misplaced_tests(tests: Path, packages: set[str]) -> list[str]:
    """Test files not in tests/<tier>/<a package or one of TEST_FOLDERS_BEYOND_PACKAGES>/, or too long."""
    allowed = packages | TEST_FOLDERS_BEYOND_PACKAGES
    found = []
    for path in sorted(tests.glob("*/**/test_*.py")):
        parts = path.relative_to(tests).parts
        if len(parts) != 3 or parts[1] not in allowed:
            found.append(f"{path.relative_to(tests)}: not in tests/<tier>/<package>/")
        elif len(path.read_text().splitlines()) > TEST_FILE_LINES:
            found.append(f"{path.relative_to(tests)}: over {TEST_FILE_LINES} lines")
    return found


def test_the_tests_mirror_the_packages_in_files_a_reader_can_take_in() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert misplaced_tests(PACKAGE.parent / "tests", packages) == []


def test_the_test_layout_check_catches_a_stray_and_a_long_file(tmp_path) -> None:
    (tmp_path / "unit" / "serving").mkdir(parents=True)
    (tmp_path / "unit" / "serving" / "test_ok.py").write_text("x = 1\n")
    (tmp_path / "unit" / "test_flat.py").write_text("x = 1\n")
    (tmp_path / "unit" / "nowhere").mkdir()
    (tmp_path / "unit" / "nowhere" / "test_lost.py").write_text("x = 1\n")
    (tmp_path / "unit" / "serving" / "test_long.py").write_text("x = 1\n" * 501)
    assert misplaced_tests(tmp_path, {"serving"}) == [
        "unit/nowhere/test_lost.py: not in tests/<tier>/<package>/",
        "unit/serving/test_long.py: over 500 lines",
        "unit/test_flat.py: not in tests/<tier>/<package>/",
    ]


def package(root: Path, **modules: str) -> Path:
    """A package `pkg` under `root` holding `modules` (name -> source): what the checks are tried on."""
    pkg = root / "pkg"
    pkg.mkdir()
    for name, source in {"__init__": "", **modules}.items():
        (pkg / f"{name}.py").write_text(source)
    return pkg


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        a="from pkg.b import thing\n",
        b="def thing():\n    from pkg import c\n",
        c="import pkg.a\n",
        d="from pkg import a\n",
    )
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


def test_importing_the_cli_loads_no_heavy_package() -> None:
    """`facemask --help` stays fast: the CLI module pulls in none of the heavy third-party packages."""
    heavy = ("torch", "ray", "ultralytics", "mlflow", "numpy", "cv2", "fastapi", "PIL")
    code = f"import sys, facemask.cli; print(','.join(sorted(m for m in {heavy!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing facemask.cli loads {out.stdout.strip()}"


STORE_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# The one place the library writes the MLflow store into a process's environment.
STORE_WRITER = ("facemask.tracking.runs", "set_process_store")


def environment_writes(root: Path, keys: tuple[str, ...] = STORE_KEYS) -> list[str]:
    """`module:function:line` of each statement that writes one of `keys` into os.environ (or putenv).

    A write is an assignment to `os.environ[...]`, or a call of environ's setdefault, update,
    pop or __setitem__, or of os.putenv, whose statement names one of `keys`.
    """
    found = []
    for path in root.rglob("*.py"):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        functions = {
            id(node): fn.name
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AugAssign, ast.Expr)):
                continue
            text = ast.unparse(node)
            writes = (isinstance(node, (ast.Assign, ast.AugAssign)) and "environ[" in text.split("=")[0]) or any(
                f"{name}(" in text for name in ("environ.setdefault", "environ.update", "environ.pop", "putenv")
            )
            names_key = any(key in text for key in keys) or "STORE_ENV" in text
            if writes and names_key:
                found.append(f"{module}:{functions.get(id(node), '<module>')}:{node.lineno}")
    return found


def test_only_the_one_helper_writes_the_mlflow_store_into_the_environment() -> None:
    import importlib

    writes = [w for w in environment_writes(PACKAGE) if tuple(w.split(":")[:2]) != STORE_WRITER]
    assert not writes, f"write the MLflow store through {'.'.join(STORE_WRITER)}, not directly: {writes}"
    module, function = STORE_WRITER
    assert callable(getattr(importlib.import_module(module), function))


def test_the_environment_check_sees_direct_writes(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        a="import os\n"
        "def trial(uri):\n    os.environ['MLFLOW_TRACKING_URI'] = uri\n"
        "def other(uri):\n    os.environ.setdefault('MLFLOW_REGISTRY_URI', uri)\n"
        "def fine():\n    os.environ['OTHER'] = '1'\n",
    )
    assert environment_writes(pkg) == ["pkg.a:trial:3", "pkg.a:other:5"]


# Where the store is read from the environment: the command line, and a Serve application's
# start-up (serve/config.yaml and the RayService build it without the CLI). Everything below
# them is handed the store as an argument.
# The CLI's command modules, and Serve's application builder (a replica's start-up).
STORE_READERS = {
    *((f"facemask.cli.{name}", None) for name in ("base", "data", "train", "quality", "serve", "predict", "watch")),
    ("facemask.serving.deployment", "build_app"),
}


def store_reads(root: Path) -> list[str]:
    """`module:function:line` of each call of `default_tracking_uri()`, or use of the name MLFLOW_TRACKING_URI,
    outside the function that defines it."""
    found = []
    for path in root.rglob("*.py"):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "default_tracking_uri":
                continue
            for node in ast.walk(fn):
                called = isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "default_tracking_uri"
                read = isinstance(node, ast.Constant) and node.value == "MLFLOW_TRACKING_URI"
                if (called or read) and (module, None) not in STORE_READERS and (module, fn.name) not in STORE_READERS:
                    found.append(f"{module}:{fn.name}:{node.lineno}")
    return sorted(set(found))


def test_the_tracking_store_is_read_only_by_entry_points() -> None:
    reads = store_reads(PACKAGE)
    assert not reads, f"pass the tracking URI down from the entry point instead of reading it here: {reads}"


def test_the_store_read_check_sees_a_fallback(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        a="import os\n"
        "from facemask.tracking import default_tracking_uri\n"
        "def log(uri=None):\n    return uri or default_tracking_uri()\n"
        "def env():\n    return os.environ.get('MLFLOW_TRACKING_URI')\n"
        "def fine(uri):\n    return uri\n",
    )
    assert store_reads(pkg) == ["pkg.a:env:6", "pkg.a:log:4"]


# Vendors whose private parts facemask reaches into, only from facemask/compat/.
VENDORS = ("ray", "ultralytics", "mlflow", "uvicorn", "onnxruntime")


def private_reaches(path: Path) -> list[str]:
    """Each private name (a `_x` part, not a dunder) of a vendor's that `path` imports or reads."""

    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    found: list[str] = []
    vendor_names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in VENDORS:
                    vendor_names.add((alias.asname or alias.name).split(".")[0])
                    if private(alias.name):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in VENDORS:
            names = [a.name for a in node.names]
            if private(node.module) or any(private(n) for n in names):
                found.append(f"from {node.module} import {', '.join(names)}")
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner and private(ast.unparse(node)):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in vendor_names:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_private_parts_of_dependencies_are_reached_only_from_compat():
    outside = {
        str(path.relative_to(PACKAGE.parent)): reaches
        for path in sorted(PACKAGE.rglob("*.py"))
        if "compat" not in path.parts and (reaches := private_reaches(path))
    }
    assert outside == {}, outside
    inside = [private_reaches(path) for path in sorted((PACKAGE / "compat").glob("*.py"))]
    assert sum(len(r) for r in inside) >= 4  # the check sees the reaches where they are allowed


def test_the_private_name_check_finds_each_kind(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import ray\nfrom ray.serve._private.constants import X\nfrom ray.serve.context import _get_ctx\n"
        "node = ray._private.worker._global_node\nfrom ray import serve\nserve.run\n"
    )
    assert len(private_reaches(probe)) == 3


# The MLflow store has one name from the CLI to the MLflow call: `tracking_uri`.
OTHER_STORE_NAMES = {"uri", "store", "store_uri", "mlflow_uri"}


def store_parameters(root: Path) -> list[str]:
    """`module:function:parameter` of each function parameter that names the store otherwise."""
    found = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                found += [f"{module_name(path, root)}:{fn.name}:{a.arg}" for a in args if a.arg in OTHER_STORE_NAMES]
    return sorted(found)


def test_the_store_has_one_name() -> None:
    others = store_parameters(PACKAGE)
    assert not others, f"name the MLflow store `tracking_uri`: {others}"


def test_the_store_name_check_sees_another_name(tmp_path: Path) -> None:
    pkg = package(tmp_path, a="def log(run_id, uri):\n    pass\ndef fine(run_id, tracking_uri):\n    pass\n")
    assert store_parameters(pkg) == ["pkg.a:log:uri"]


# A file or function past these reads as more than one idea: split it where the ideas part.
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 60


def oversized(root: Path) -> list[str]:
    """`module (N lines)` for each file, and `module:function (N lines)` for each function, over the limits."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        module = module_name(path, root)
        if (lines := len(text.splitlines())) > MAX_FILE_LINES:
            found.append(f"{module} ({lines} lines)")
        for fn in ast.walk(ast.parse(text, str(path))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (lines := fn.end_lineno - fn.lineno + 1) > MAX_FUNCTION_LINES:
                    found.append(f"{module}:{fn.name} ({lines} lines)")
    return found


def test_no_file_or_function_is_oversized() -> None:
    found = oversized(PACKAGE)
    assert not found, f"split these (files over {MAX_FILE_LINES} lines, functions over {MAX_FUNCTION_LINES}): {found}"


def test_the_size_check_sees_a_long_function(tmp_path: Path) -> None:
    pkg = package(tmp_path, a="def long():\n" + "    x = 1\n" * 60 + "def short():\n    pass\n")
    assert oversized(pkg) == ["pkg.a:long (61 lines)"]
