"""The package's modules import one another in one direction, from the bottom up:

    config (and errors) -> blas -> jit, lanes -> kernels -> rowgrad, cells, softmax, optim
        -> model -> cloze -> score, fill, sample, checkpoint -> train -> cli
    (budget imports config alone: train uses its deadline, cli its chooser)
    (vocab, textio and corpus import only errors; score, sample, checkpoint and train use them)

No module imports one that imports it back, directly or through others, whether at the top
or inside a function: the imports in functions are there to keep start-up fast, never to
get around a cycle. config.py, the bottom, imports nothing of rnngen's."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rnngen"
SUBPACKAGES = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}       # blas: one node of the graph
MODULES = ({path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}) | SUBPACKAGES


def rnngen_imports(source: str, depth: int = 1) -> set[str]:
    """The package's modules that a module's ``source`` imports, anywhere in it:
    ``from . import x``, ``from .x import y``, ``from rnngen.x import y``, ``import rnngen.x``.
    ``depth`` 2 reads a file of a subpackage: its ``from ..x`` imports are the package's, its
    ``from .x`` imports its own (not counted)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("rnngen.")}
        elif isinstance(node, ast.ImportFrom):
            package = node.level == depth or (node.level == 0 and (node.module or "").split(".")[0] == "rnngen")
            if not package:
                continue
            inside = node.module if node.level == depth else node.module.partition(".")[2]
            if inside:
                found.add(inside.split(".")[0])
            else:                                           # from . import a, b: the modules a and b
                found |= {alias.name for alias in node.names}
    return found & MODULES


def module_imports(name: str) -> set[str]:
    if name in SUBPACKAGES:
        return set().union(*(rnngen_imports(path.read_text(), 2) for path in (PACKAGE / name).glob("*.py")))
    return rnngen_imports((PACKAGE / f"{name}.py").read_text())


def import_graph() -> dict[str, set[str]]:
    return {name: module_imports(name) - {name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()

    def visit(node, path):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for after in sorted(graph.get(node, ())):
            cycle = visit(after, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_package_imports_without_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_imports_nothing_of_rnngens():
    assert rnngen_imports((PACKAGE / "config.py").read_text()) == set()


def test_budget_sits_between_config_and_train():
    assert rnngen_imports((PACKAGE / "budget.py").read_text()) == {"config"}
    assert "budget" in import_graph()["train"]


def test_the_layers_point_one_way():
    """No module of a layer imports, even through others, a module of a layer above it."""
    graph = import_graph()

    def reached(name, seen):
        for after in graph[name] - seen:
            seen.add(after)
            reached(after, seen)
        return seen

    chain = ["config", "kernels", "cells", "model", "budget", "train", "cli"]
    for i, lower in enumerate(chain):
        assert not reached(lower, set()) & set(chain[i + 1:]), lower


@pytest.mark.parametrize("source, found", [
    ("from . import blas, jit", {"blas", "jit"}),
    ("from .model import Model", {"model"}),
    ("import rnngen.train\nimport os", {"train"}),
    ("def f():\n    from rnngen.cells import CELLS\n    from rnngen import vocab", {"cells", "vocab"}),
    ("from numpy import array\nfrom .. import x", set()),
])
def test_imports_are_found_at_the_top_and_in_functions(source, found):
    assert rnngen_imports(source) == found


def test_a_subpackages_own_imports_are_not_the_packages():
    assert rnngen_imports("from . import choice\nfrom ..errors import RnngenError\nfrom .mkl import x", 2) == {"errors"}
    assert "blas" in import_graph()["kernels"] and import_graph()["blas"] <= {"errors", "config"}


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_config_names_what_the_modules_implement():
    """The names config checks a configuration against are the ones the modules implement."""
    from rnngen import cells, config, optim, softmax

    assert tuple(cells.CELLS) == config.CELL_NAMES
    assert {name: cell.gates for name, cell in cells.CELLS.items()} == config.GATES
    assert {name: cell.state_parts for name, cell in cells.CELLS.items()} == config.STATE_PARTS
    assert tuple(softmax.OUTPUTS) == config.SOFTMAX_NAMES
    assert tuple(optim.OPTIMIZERS) == config.OPTIMIZER_NAMES == tuple(config.DEFAULT_LR)
