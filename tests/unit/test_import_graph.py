"""The package's imports point one way: no import circle, and config/ (the leaf every
command composes and checks with) imports no runner.

Read from the source with `ast` (nothing is imported), counting imports inside functions
too: a lazy import is still an arrow between two modules.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "..", "sequifier")
# the modules that run a command (they call the gate and write files)
RUNNERS = ("sequifier.data.preprocess", "sequifier.train.run", "sequifier.infer.run",
           "sequifier.infer.evaluate", "sequifier.export", "sequifier.cli", "sequifier.multirun",
           "sequifier.plot", "sequifier.demo")


def modules() -> dict[str, str]:
    """module name -> file, for every module of the package."""
    found = {}
    root = os.path.abspath(os.path.join(PACKAGE, ".."))
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def imports(path: str, module: str, known) -> set[str]:
    """The package's modules `module` imports (the module itself for `from pkg import mod`),
    with the packages whose `__init__` the import runs."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    # A package's module-level __getattr__ (PEP 562) re-exports a name on first use, never
    # at import time: `sequifier.infer.run_infer` does not make `infer.options` import run.
    lazy = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    skip = {id(n) for f in lazy for n in ast.walk(f)} if path.endswith("__init__.py") else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:  # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {n for n in out if n in known and n != module}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(p, m, found) for m, p in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle():
    assert circles(graph()) == []


def test_config_imports_no_runner():
    arrows = [(m, i) for m, targets in graph().items() if m.startswith("sequifier.config")
              for i in targets if i in RUNNERS or not i.startswith(("sequifier.config", "sequifier.errors",
                                                                     "sequifier.io_utils", "sequifier.project"))]
    assert arrows == []


@pytest.mark.parametrize("module", ["sequifier.project", "sequifier.config.problems"])
def test_layout_and_collector_are_leaves(module):
    """What everything asks (the layout, the problem collector) imports only errors."""
    assert graph()[module] <= {"sequifier.errors"}


def test_the_check_finds_a_circle():
    """The circle test is not vacuous: a planted circle is found."""
    edges = graph()
    edges["sequifier.config.schema"] = edges["sequifier.config.schema"] | {"sequifier.train.run"}
    assert any("sequifier.config.schema" in group for group in circles(edges))


def test_plot_and_multirun_ask_the_layout_not_the_trainer():
    """They need folder names, not train/run.py (which imports torch)."""
    edges = graph()
    assert "sequifier.train.run" not in edges["sequifier.plot"] | edges["sequifier.multirun"]


def test_preprocess_and_infer_checks_do_not_import_torch():
    """The gate imports each command's rules on demand: checking a preprocess or an
    (ONNX) infer config, the layout and the sweep files need no torch."""
    import subprocess
    import sys

    code = ("import sys; import sequifier.gate, sequifier.data.rules, sequifier.infer.options, "
            "sequifier.infer.run, sequifier.project, sequifier.plot, sequifier.multirun; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
