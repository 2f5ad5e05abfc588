"""mtlexp's modules form layers without cycles (docs/architecture.md).

Imports are read from the source with ``ast`` at every depth, so an import inside a function (the usual way to
hide a cycle) counts like one at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mtlexp

PACKAGE = Path(mtlexp.__file__).parent

# Lowest first; docs/architecture.md shows the same table. A module may import its own layer and the layers
# listed before it. Layers on one line of the docs' table share a rank: neither may import the other.
# Matching is by the longest prefix, so a package's modules may sit in another layer than the package.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "foundation", ("mtlexp", "mtlexp.errors", "mtlexp.io", "mtlexp.processes", "mtlexp.noise", "mtlexp.redact",
                       "mtlexp.provenance", "mtlexp.config", "mtlexp.instantiate", "mtlexp.lightning_compat",
                       "mtlexp.torchjd_compat", "mtlexp.checkpoint_io", "mtlexp.distributed", "mtlexp.gate_stats",
                       "mtlexp.run_folder", "mtlexp.run_record", "mtlexp.artefacts")),
    (1, "specs", ("mtlexp.specs",)),
    (2, "kinds", ("mtlexp.metrics", "mtlexp.kinds", "mtlexp.tasks")),
    (3, "data", ("mtlexp.data",)),
    (3, "models", ("mtlexp.models",)),
    (4, "weighting", ("mtlexp.weighting",)),
    (5, "module", ("mtlexp.objective", "mtlexp.module", "mtlexp.stacking.model", "mtlexp.stacking.module")),
    (6, "run", ("mtlexp.components", "mtlexp.record", "mtlexp.runner", "mtlexp.stacking.train", "mtlexp.train",
                "mtlexp.evaluate", "mtlexp.pruning")),
    (6, "report", ("mtlexp.report",)),
    (7, "cli", ("mtlexp.cli", "mtlexp.__main__", "mtlexp.hpo")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mtlexp modules ``name`` imports, anywhere in its source. ``from pkg import x`` is ``pkg.x`` when that
    is a module, else ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer_of(name: str) -> tuple[int, str]:
    matches = [(len(prefix), rank, layer) for rank, layer, prefixes in LAYERS for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer: add it to LAYERS here and to docs/architecture.md"
    _, rank, layer = max(matches)
    return rank, layer


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_reads_imports_inside_functions_and_relative_ones():
    edges = graph()
    assert "mtlexp.hpo" in edges["mtlexp.cli"]  # at the top
    assert "mtlexp.train" in edges["mtlexp.cli"]  # inside a function
    assert "mtlexp.report.sweep" in edges["mtlexp.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer():
    wrong = []
    for name, targets in sorted(graph().items()):
        rank, layer = layer_of(name)
        for target in sorted(targets):
            target_rank, target_layer = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_layer != layer):
                wrong.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_docs_show_the_layer_table():
    docs = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    for _, layer, prefixes in LAYERS:
        for prefix in prefixes:
            assert f"`{prefix}`" in docs, f"docs/architecture.md: {prefix} ({layer}) is not in the layer table"


def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_a_training_run_does_not_import_the_report():
    """torchmetrics imports scipy itself (``torchmetrics/__init__.py``, whenever scipy is installed), so a run
    cannot avoid scipy; what it must not load is the report's own code, and scipy or pandas through mtlexp."""
    edges, paths = graph(), modules()
    reached = closure("mtlexp.train", edges)
    assert not {m for m in reached if m.startswith("mtlexp.report")}
    assert not {m for m in reached if third_party_imports(paths[m]) & {"scipy", "pandas"}}
    code = ("import sys, mtlexp.train; "
            "print(sorted(m for m in sys.modules if m.startswith('mtlexp.report') or m.split('.')[0] == 'pandas'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_run_record_loads_neither_torch_nor_pandas():
    """The report, the sweep summary and the HPO glue read runs through ``mtlexp.run_record``: reading a record
    must not pay for a training stack."""
    code = ("import sys, mtlexp.run_record; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
