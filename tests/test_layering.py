"""The layering the code relies on: the core never imports the command-line libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = ("xmtc_cli.training", "xmtc_cli.inference", "xmtc_cli.evaluation",
        "xmtc_cli.data.preprocess", "xmtc_cli.run", "xmtc_cli.checkpoint")


def test_importing_the_core_loads_neither_typer_nor_rich():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', "
            "'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def _package_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in its body
    (imports inside functions count: they close a circle at run time just the same)."""
    root = Path(__file__).parents[1] / "xmtc_cli"
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        found = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".")[: len(name.split(".")) - node.level
                                                + (path.name == "__init__.py")]
                    base = ".".join(package + [node.module])
                else:
                    base = node.module
                for a in node.names:
                    if f"{base}.{a.name}" in files:
                        found.add(f"{base}.{a.name}")  # `from pkg import module`
                    elif base in files:
                        found.add(base)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module
    that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1 or v in edges[v]:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return circles


def test_the_circle_finder_finds_a_circle_and_only_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(_circles(edges)) == [["a", "b", "c"], ["e"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_sees_imports_inside_functions():
    # cli/train.py imports training only inside the command (so that --help needs no torch):
    # a graph that missed such imports would miss the circles they close.
    assert "xmtc_cli.training" in _package_imports()["xmtc_cli.cli.train"]


def test_no_import_circle_among_the_package_modules():
    assert _circles(_package_imports()) == []


def _private_uses(private: set[str], skip: str) -> list[str]:
    """`module:line .name` for every attribute access to one of `private` outside `skip`."""
    root = Path(__file__).parents[1] / "xmtc_cli"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == skip and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{path.relative_to(root)}:{node.lineno} .{node.attr}")
    return found


def test_no_module_reaches_into_the_models_private_methods():
    # Other modules use the model through its public methods (encode, decode, last_layer, ...):
    # a private one may change with the model without its callers knowing.
    tree = ast.parse((Path(__file__).parents[1] / "xmtc_cli" / "model.py").read_text("utf-8"))
    model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Seq2SetModel")
    private = {n.name for n in model.body if isinstance(n, ast.FunctionDef)
               and n.name.startswith("_") and not n.name.endswith("__")}
    assert {"_check_features", "_output_head"} <= private  # the rule has something to check
    assert _private_uses(private, skip="model.py") == []
