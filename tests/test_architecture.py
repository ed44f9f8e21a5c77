"""The layer rules of docs/architecture.md, checked on every module's imports.

Every ``import`` of metstrack in ``src/metstrack`` is read with :mod:`ast`,
including those inside functions and under ``if TYPE_CHECKING:``, and the
graph must satisfy:

* no import goes up a layer (core 1 < pure domains 2 < I/O 3 < workflows 4 < faces 5);
* no import crosses between two pure domains (metrics, models, tracking, survival, synth);
* no cycle, between modules or between the packages of the table below;
* no pure domain imports the atomic file writer (pure domains write no files);
* no function-local import of metstrack outside ``metstrack.cli`` (the CLI
  imports each command's workflow when the command runs, so ``metstrack --help``
  starts without importing torch).

The checker is plain functions on a ``{module: [Import, ...]}`` graph, so the
tests at the bottom feed it small synthetic graphs and see it fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

ROOT = "metstrack"
#: Where each package sits: module prefix -> (layer number, group). A module
#: belongs to its longest matching prefix (the root package covers only its own
#: ``__init__``); a module matching none is an error.
LAYERS: dict[str, tuple[int, str]] = {
    # 1. core: records, errors, configuration, geometry, atomic writes, lesion labelling
    "metstrack": (1, "core"),
    "metstrack.errors": (1, "core"),
    "metstrack.types": (1, "core"),
    "metstrack.config": (1, "core"),
    "metstrack.core": (1, "core"),
    # 2. pure domains: arrays, tensors and tables in, records out; no files
    "metstrack.metrics": (2, "metrics"),
    "metstrack.models": (2, "models"),
    "metstrack.tracking": (2, "tracking"),
    "metstrack.survival": (2, "survival"),
    "metstrack.synth": (2, "synth"),
    # 3. I/O: readers, writers, layouts, catalog, checkpoint files
    "metstrack.io": (3, "io"),
    "metstrack.catalog": (3, "io"),
    "metstrack.data": (3, "io"),
    # 4. workflows: library functions with typed inputs and outputs
    "metstrack.preprocess": (4, "preprocess"),
    "metstrack.infer": (4, "infer"),
    "metstrack.train": (4, "train"),
    "metstrack.workflows": (4, "workflows"),
    "metstrack.benchmark": (4, "benchmark"),
    "metstrack.execution": (4, "execution"),
    # 5. faces: the report, the demo that ends in it, the CLI
    "metstrack.report": (5, "report"),
    "metstrack.demo": (5, "demo"),
    "metstrack.cli": (5, "cli"),
}
PURE_DOMAIN_LAYER = 2
#: Modules that write files, which no pure domain may import.
FILE_WRITERS = ("metstrack.core.atomic",)
#: The only package whose functions may import metstrack lazily (CLI start-up time).
LAZY_IMPORTS_ALLOWED = ("metstrack.cli",)
LAYER_NAMES = {1: "core", 2: "pure domains", 3: "I/O", 4: "workflows", 5: "faces"}


@dataclass(frozen=True)
class Import:
    """One import of a metstrack module: target, line, whether inside a function, and the
    module path as written when no such module exists (a path that moved), else ``""``."""

    target: str
    line: int
    in_function: bool
    missing: str = ""


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/metstrack/io/nifti.py`` -> ``metstrack.io.nifti`` (packages by their ``__init__``)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_graph(src: Path = SRC) -> dict[str, list[Import]]:
    """Every module under ``src/metstrack`` with its imports of metstrack modules."""
    paths = {module_name(p, src): p for p in sorted((src / "metstrack").rglob("*.py"))}
    return {name: parse_imports(name, path.read_text(), set(paths)) for name, path in paths.items()}


def parse_imports(module: str, source: str, modules: set[str]) -> list[Import]:
    """The metstrack imports of one module's source, function-local ones flagged.

    ``from metstrack.x import y`` counts as an import of ``metstrack.x.y`` when
    that is a module, else of ``metstrack.x``; relative imports are resolved.
    """
    is_pkg = module in modules and any(m.startswith(module + ".") for m in modules)
    package = module if is_pkg else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt, depth: int, written: str) -> None:
        missing = "" if written in modules else written
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.append(Import(target, node.lineno, depth > 0, missing))

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "metstrack":
                        add(alias.name, child, depth, alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.split(".")[0] != "metstrack":
                    continue
                for alias in child.names:
                    full = f"{mod}.{alias.name}"
                    add(full if full in modules else mod, child, depth, mod)
            visit(child, inner)

    visit(ast.parse(source), 0)
    return found


def place(module: str, layers: Mapping[str, tuple[int, str]] = LAYERS) -> tuple[int, str]:
    """(layer, group) of a module: its longest prefix in ``layers`` (the root only itself)."""
    best = ""
    for prefix in layers:
        covers = module == prefix or (prefix != ROOT and module.startswith(prefix + "."))
        if covers and len(prefix) > len(best):
            best = prefix
    if not best:
        raise KeyError(f"{module}: in no layer; add its package to LAYERS and docs/architecture.md")
    return layers[best]


def layer_violations(
    graph: Mapping[str, Iterable[Import]],
    layers: Mapping[str, tuple[int, str]] = LAYERS,
    lazy_allowed: tuple[str, ...] = LAZY_IMPORTS_ALLOWED,
) -> list[str]:
    """Imports that go up a layer, cross between pure domains, or hide in a function."""
    out = []
    for module, imports in sorted(graph.items()):
        layer, group = place(module, layers)
        for imp in imports:
            t_layer, t_group = place(imp.target, layers)
            where = f"{module}:{imp.line} imports {imp.target}"
            if t_layer > layer:
                out.append(
                    f"{where}: up from {LAYER_NAMES.get(layer, layer)} "
                    f"to {LAYER_NAMES.get(t_layer, t_layer)}"
                )
            elif layer == t_layer == PURE_DOMAIN_LAYER and group != t_group:
                out.append(f"{where}: crosses between pure domains ({group} -> {t_group})")
            if layer == PURE_DOMAIN_LAYER and imp.target in FILE_WRITERS:
                out.append(f"{where}: a pure domain writes no files (move the writing to io/)")
            if imp.in_function and not module.startswith(lazy_allowed):
                out.append(f"{where}: inside a function (import it at the top of the module)")
    return out


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = set(edges) | {t for ts in edges.values() for t in ts}

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            connect(v)
    return sorted(found)


def module_edges(graph: Mapping[str, Iterable[Import]]) -> dict[str, set[str]]:
    """Module -> imported modules."""
    return {m: {i.target for i in imps} for m, imps in graph.items()}


def group_edges(
    graph: Mapping[str, Iterable[Import]], layers: Mapping[str, tuple[int, str]] = LAYERS
) -> dict[str, set[str]]:
    """Group of the table (``core``, ``metrics``, ``io``, ...) -> groups it imports."""
    out: dict[str, set[str]] = {}
    for module, imports in graph.items():
        src = place(module, layers)[1]
        out.setdefault(src, set()).update(
            g for g in (place(i.target, layers)[1] for i in imports) if g != src
        )
    return out


# ------------------------------------------------------------------ the real package


def test_every_module_sits_in_a_layer() -> None:
    graph = read_graph()
    assert len(graph) > 100  # the walk found the package
    for module in graph:
        place(module)  # raises naming the module


def test_no_import_goes_up_a_layer_crosses_domains_or_hides_in_a_function() -> None:
    assert layer_violations(read_graph()) == []


def missing_modules(graph: Mapping[str, Iterable[Import]]) -> list[str]:
    """Imports naming a metstrack module that does not exist (a path that moved)."""
    return [
        f"{module}:{imp.line} imports {imp.missing}, which does not exist; "
        "see the moved paths in docs/architecture.md"
        for module, imports in sorted(graph.items())
        for imp in imports
        if imp.missing
    ]


def test_every_import_names_an_existing_module() -> None:
    assert missing_modules(read_graph()) == []


def test_no_module_cycle() -> None:
    assert cycles(module_edges(read_graph())) == []


def test_no_package_cycle() -> None:
    assert cycles(group_edges(read_graph())) == []


# ------------------------------------------------------------------ the checker can fail


def test_checker_flags_an_import_going_up_a_layer() -> None:
    graph = {"metstrack.metrics.voxel": [Import("metstrack.io.nifti", 12, False)]}
    assert layer_violations(graph) == [
        "metstrack.metrics.voxel:12 imports metstrack.io.nifti: up from pure domains to I/O"
    ]


def test_checker_flags_an_import_between_pure_domains() -> None:
    graph = {"metstrack.survival.table": [Import("metstrack.tracking.trajectory", 3, False)]}
    (msg,) = layer_violations(graph)
    assert "crosses between pure domains (survival -> tracking)" in msg


def test_checker_flags_a_pure_domain_that_writes_files() -> None:
    graph = {"metstrack.survival.km": [Import("metstrack.core.atomic", 11, False)]}
    (msg,) = layer_violations(graph)
    assert msg.startswith("metstrack.survival.km:11") and "writes no files" in msg


def test_checker_flags_a_function_local_import_outside_the_cli() -> None:
    graph = {
        "metstrack.workflows.evaluate": [Import("metstrack.core.atomic", 40, True)],
        "metstrack.cli.evaluate": [Import("metstrack.workflows.evaluate", 9, True)],
    }
    (msg,) = layer_violations(graph)
    assert msg.startswith("metstrack.workflows.evaluate:40") and "inside a function" in msg


def test_checker_allows_imports_down_and_within_a_layer() -> None:
    graph = {
        "metstrack.cli.main": [Import("metstrack.workflows.track", 1, False)],
        "metstrack.workflows.track": [
            Import("metstrack.tracking.tracker", 1, False),
            Import("metstrack.io.nifti", 2, False),
            Import("metstrack.preprocess.pipeline", 3, False),
        ],
        "metstrack.tracking.tracker": [Import("metstrack.tracking.match", 1, False)],
    }
    assert layer_violations(graph) == []


def test_checker_finds_a_cycle_through_a_function_local_import() -> None:
    source_a = "from metstrack.b import f\n"
    source_b = "def g():\n    from metstrack.a import h\n    return h\n"
    modules = {"metstrack", "metstrack.a", "metstrack.b"}
    graph = {
        "metstrack.a": parse_imports("metstrack.a", source_a, modules),
        "metstrack.b": parse_imports("metstrack.b", source_b, modules),
    }
    assert graph["metstrack.b"] == [Import("metstrack.a", 2, True)]
    stale = parse_imports("metstrack.a", "from metstrack.old.place import f\n", modules)
    assert missing_modules({"metstrack.a": stale}) == [
        "metstrack.a:1 imports metstrack.old.place, which does not exist; "
        "see the moved paths in docs/architecture.md"
    ]
    assert cycles(module_edges(graph)) == [["metstrack.a", "metstrack.b"]]


def test_checker_finds_a_package_cycle_and_an_unplaced_module() -> None:
    graph = {
        "metstrack.io.export": [Import("metstrack.workflows.track", 1, False)],
        "metstrack.workflows.track": [Import("metstrack.io.nifti", 1, False)],
        "metstrack.io.nifti": [],
    }
    assert cycles(group_edges(graph)) == [["io", "workflows"]]
    assert cycles(module_edges(graph)) == []
    try:
        place("metstrack.newpkg.thing")
    except KeyError as exc:
        assert "metstrack.newpkg.thing: in no layer" in str(exc)
    else:  # pragma: no cover - the assertion is the point
        raise AssertionError("an unplaced module was accepted")


def test_parse_imports_resolves_relative_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import nifti\n"
        "import metstrack.core.atomic as atomic\n"
        "if TYPE_CHECKING:\n"
        "    from metstrack.tracking.records import TrackingResult\n"
    )
    modules = {
        "metstrack",
        "metstrack.io",
        "metstrack.io.nifti",
        "metstrack.io.export",
        "metstrack.core",
        "metstrack.core.atomic",
        "metstrack.tracking",
        "metstrack.tracking.records",
    }
    found = parse_imports("metstrack.io.export", source, modules)
    assert [i.target for i in found] == [
        "metstrack.io.nifti",
        "metstrack.core.atomic",
        "metstrack.tracking.records",
    ]
    assert not any(i.in_function for i in found)


#: Size limits of issue 16 ("oversized units"): a module reads in one sitting,
#: a function is a handful of named steps.
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 150


def oversized(src: Path = SRC) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES (docstring in)."""
    found = []
    for path in sorted((src / ROOT).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = module_name(path, src)
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append(f"{name}.{node.name}: {n} lines")
    return found


def test_no_oversized_module_or_function() -> None:
    assert oversized() == []


def test_size_checker_flags_a_long_module_and_function(tmp_path) -> None:
    pkg = tmp_path / ROOT
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "big.py").write_text("def long():\n" + body + "\n" + "\n" * MAX_MODULE_LINES)
    assert oversized(tmp_path) == [
        f"{ROOT}.big: {MAX_MODULE_LINES + MAX_FUNCTION_LINES + 1} lines",
        f"{ROOT}.big.long: {MAX_FUNCTION_LINES + 1} lines",
    ]
