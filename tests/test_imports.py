"""Import structure: every module of the package imports on its own, the module-level imports
form a DAG, and in the ``data`` package no cycle hides behind imports inside functions either
(issue 12.3: ``datasets -> sample -> proposal_tool -> datasets`` did)."""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d3ssl_zoo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[str]:
    return sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _imports(tree: ast.Module, top_level: bool = True):
    """Import statements run when the module is imported: the module body and the blocks of its
    top-level ``if``/``try``/``with``, never the bodies of functions or classes; with
    ``top_level=False`` every import statement of the file."""
    if not top_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo += getattr(node, field, [])
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body


def import_graph(package: str, top_level: bool = True) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``pkg`` for its ``__init__``), at module
    level or, with ``top_level=False``, anywhere in the file."""
    root = PACKAGE.parent.joinpath(*package.split("."))
    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_init = path.name == "__init__.py"
        here = name if is_init else name.rpartition(".")[0]  # the package relative imports start from
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), top_level):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = here.split(".")[:len(here.split(".")) - node.level + 1] if node.level else []
                base = ".".join(base + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg/__init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import pkg.mod.attr`-like names: the nearest module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_finds_a_cycle_hidden_by_nothing():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", ["d3ssl_zoo.data", "d3ssl_zoo"])
def test_module_level_imports_form_a_dag(package):
    graph = import_graph(package)
    assert "d3ssl_zoo.data.coco_json" in graph["d3ssl_zoo.data.images"]  # the parser sees relative imports
    assert "d3ssl_zoo.data.selective_search" in graph["d3ssl_zoo.data.sample"]
    assert "d3ssl_zoo.data.selective_search" not in graph["d3ssl_zoo.data.cli"]  # imported in a function
    cycle = find_cycle(graph)
    assert cycle is None, f"module-level import cycle in {package}: " + " -> ".join(cycle)


def test_no_import_cycle_in_data_even_through_imports_inside_functions():
    graph = import_graph("d3ssl_zoo.data", top_level=False)
    assert "d3ssl_zoo.data.selective_search" in graph["d3ssl_zoo.data.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in d3ssl_zoo.data (counting imports inside functions): " + " -> ".join(cycle)


def test_every_module_imports_in_isolation():
    """Each module imported first, in a process where no module of the package is loaded yet (as
    ``python -c 'import d3ssl_zoo.x.y'`` would), so an import cycle that breaks an isolated import
    fails here. One fresh interpreter imports the third-party libraries once and forks a child per
    module (a fresh interpreter per module would pay torch's import ~60 times)."""
    modules = package_modules()
    assert len(modules) > 40 and "d3ssl_zoo.data.selective_search" in modules
    if not hasattr(os, "fork"):  # a fresh interpreter per module
        failed = [m for m in modules if subprocess.run([sys.executable, "-c", f"import {m}"],
                                                       cwd=PACKAGE.parent).returncode != 0]
        assert not failed, f"modules that do not import on their own: {failed}"
        return
    script = textwrap.dedent("""
        import importlib, os, sys, traceback
        for lib in ("numpy", "torch", "torchvision", "timm", "cv2", "PIL.Image", "safetensors", "huggingface_hub",
                    "accelerate", "pycocotools.coco", "yaml", "tqdm.auto"):
            try:
                importlib.import_module(lib)
            except ImportError:
                pass  # the module that needs it reports it
        assert not any(m == "d3ssl_zoo" or m.startswith("d3ssl_zoo.") for m in sys.modules)
        failed = []
        for name in sys.argv[1:]:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                failed.append(name)
        print("FAILED:", " ".join(failed))
        sys.exit(1 if failed else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=600,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
