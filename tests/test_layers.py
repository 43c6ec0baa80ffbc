"""The architecture as a table: every lcgen module's layer, and a walk over the sources that checks
imports only go down the layers, no lcgen import hides inside a function, nothing imports the old
top-level names, and the module graph has no cycle."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folder -> package it installs as (pyproject.toml's [tool.setuptools.package-dir])
FOLDERS = {"lcgen": "lcgen", "configs": "lcgen.configs", "tokenizer": "lcgen.tokenizer", "priors": "lcgen.priors",
           "pipelines": "lcgen.pipelines", "eval": "lcgen.eval"}
FOUNDATIONS, TOKENIZER, PRIORS, PIPELINES, RUNNERS = 1, 2, 3, 4, 5
# longest matching prefix wins
LAYERS = {
    "lcgen": FOUNDATIONS, "lcgen.log": FOUNDATIONS, "lcgen.configs": FOUNDATIONS, "lcgen.data": FOUNDATIONS,
    "lcgen.training": FOUNDATIONS, "lcgen.eval": RUNNERS, "lcgen.eval.metrics": FOUNDATIONS,
    "lcgen.eval.fid": FOUNDATIONS,
    "lcgen.tokenizer": TOKENIZER, "lcgen.tokenizer.train": RUNNERS, "lcgen.tokenizer.codebook_init": RUNNERS,
    "lcgen.tokenizer.patch_encoders": RUNNERS,
    "lcgen.priors": PRIORS, "lcgen.priors.train": RUNNERS, "lcgen.priors.extract": RUNNERS,
    "lcgen.pipelines": PIPELINES,
    "lcgen.cli": RUNNERS, "lcgen.demo": RUNNERS, "lcgen.convert": RUNNERS, "lcgen.official_checkpoints": FOUNDATIONS,
}
OLD_NAMES = {"tokenizer", "priors", "pipelines", "eval", "lcgen_cli", "lcgen_demo"}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} has no layer in the table")


def sources():
    """(module name, path, is_package) of every lcgen source file."""
    for folder, package in FOLDERS.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            base = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    is_pkg = f == "__init__.py"
                    yield (base if is_pkg else f"{base}.{f[:-3]}"), os.path.join(dirpath, f), is_pkg


def imports(module: str, path: str, is_pkg: bool):
    """(imported module, line, inside a function?) for every import of the file; relative ones resolved."""
    tree = ast.parse(open(path).read())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    package = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import submodule` imports the submodule
            for a in node.names:
                yield target, node.lineno, id(node) in local
                yield f"{target}.{a.name}", node.lineno, id(node) in local


ALL = list(sources())
KNOWN = {m for m, _, _ in ALL}


def lcgen_edges():
    for module, path, is_pkg in ALL:
        for target, line, in_function in imports(module, path, is_pkg):
            if target.split(".")[0] == "lcgen" and target in KNOWN:
                yield module, target, f"{os.path.relpath(path, ROOT)}:{line}", in_function


def test_every_module_has_a_layer_and_the_table_is_not_empty():
    assert len(ALL) > 50 and {layer(m) for m, _, _ in ALL} == {1, 2, 3, 4, 5}


def test_imports_only_go_down_the_layers():
    upward = [f"{where}: {m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, t, where, _ in lcgen_edges() if layer(t) > layer(m) and not m.startswith(t + ".")]
    assert not upward, "\n".join(upward)


def test_no_function_local_lcgen_import():
    hidden = [f"{where}: {m} imports {t} inside a function" for m, t, where, local in lcgen_edges() if local]
    assert not hidden, "\n".join(hidden)


def test_nothing_imports_the_old_top_level_names():
    old = [f"{os.path.relpath(p, ROOT)}:{line}: {t}" for m, p, pkg in ALL for t, line, _ in imports(m, p, pkg)
           if t.split(".")[0] in OLD_NAMES]
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tests")):
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(dirpath, f)
                old += [f"{os.path.relpath(p, ROOT)}:{line}: {t}" for t, line, _ in imports("tests.x", p, False)
                        if t.split(".")[0] in OLD_NAMES]
    assert not old, "\n".join(old)


def test_the_module_graph_has_no_cycle():
    graph = {}
    for m, t, _, _ in lcgen_edges():
        if not m.startswith(t + "."):  # a module importing its own package's __init__ is no cycle
            graph.setdefault(m, set()).add(t)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("module,expected", [("lcgen.tokenizer.quantizers.search", TOKENIZER),
                                             ("lcgen.eval.metrics.perceptual", FOUNDATIONS),
                                             ("lcgen.eval.measure", RUNNERS), ("lcgen.priors.train", RUNNERS)])
def test_layer_lookup_takes_the_longest_prefix(module, expected):
    assert layer(module) == expected
