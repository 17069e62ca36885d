"""Import structure: every module of the package imports on its own, the module-level imports
form a DAG, in the ``data`` package no cycle hides behind imports inside functions either (one
did: ``datasets -> sample -> proposal tool -> datasets``), and the layers of ``docs/design.md``
hold: no part of the package imports a part it builds under (:data:`FORBIDDEN`), counting imports
inside functions and the subcommand modules ``d3ssl_zoo/cli.py`` loads by name."""
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


def _imported_names(node: ast.Import | ast.ImportFrom, name: str, is_init: bool, modules) -> list[str]:
    """The dotted names an import statement of module ``name`` imports: ``from pkg import sub`` the
    submodule ``pkg.sub``, ``from pkg import attr`` ``pkg`` (its ``__init__`` runs); relative
    imports resolved. ``modules``: the module names of the package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    here = name if is_init else name.rpartition(".")[0]  # the package relative imports start from
    base = here.split(".")[:len(here.split(".")) - node.level + 1] if node.level else []
    base = ".".join(base + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _nearest_module(target: str, modules) -> str:
    """``import pkg.mod.attr``-like names: the nearest module of the package ("" if none)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def import_graph(package: str, top_level: bool = True) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``pkg`` for its ``__init__``), at module
    level or, with ``top_level=False``, anywhere in the file."""
    root = PACKAGE.parent.joinpath(*package.split("."))
    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), top_level):
            for t in _imported_names(node, name, path.name == "__init__.py", files):
                t = _nearest_module(t, files)
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


@pytest.mark.slow
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


# --- layers ---------------------------------------------------------------------------------------------------------

#: The zoo core (``d3ssl_zoo/__init__.py`` and these modules / packages): what ``import d3ssl_zoo`` gives a
#: user, and the ground floor every other part builds on.
CORE = ("__init__", "boxes", "tags", "factory", "models", "hub", "disk", "recipe", "checkpoint")

#: Layer -> the layers it must never import (docs/design.md). A layer is the core (:data:`CORE`) or a
#: top-level part of the package (``d3ssl_zoo.<part>``); ``experiments`` (the repository's research
#: record, not installed) is forbidden to every layer.
FORBIDDEN = {
    "core":       ("method", "engine", "evaluation", "detection", "convert", "data", "cli"),
    "method":     ("engine",),
    "evaluation": ("engine",),
    "data":       ("method", "engine"),
    "detection":  ("engine", "method"),
    "convert":    ("engine", "method", "data", "evaluation", "detection"),
}
OUTSIDE = ("experiments",)  # forbidden to every layer of the package


def layer_of(module: str) -> str:
    """``core`` or the part (``engine``, ``data``, ``cli``, ...) of a module of the package; the top-level
    name of any other module (``experiments``, ``torch``)."""
    top, _, rest = module.partition(".")
    if top != PACKAGE.name:
        return top
    part = rest.partition(".")[0] or "__init__"
    return "core" if part in CORE else part


def _loaded_by_name(tree: ast.Module):
    """``(line, module)`` of the modules a file imports by their name as a string: the entries of a
    ``SUBCOMMAND_MODULES`` tuple (``d3ssl_zoo/cli.py``) and ``importlib.import_module("...")`` calls."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "SUBCOMMAND_MODULES" for t in targets) and node.value:
                yield from ((c.lineno, c.value) for c in ast.walk(node.value)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].lineno, node.args[0].value


def import_edges(package_dir: Path = PACKAGE):
    """Every import of the package at ``package_dir``: ``(file, line, importer, imported module)``, with
    the imports inside functions and classes and the modules loaded by name; an import of a module
    outside the package is given by its full dotted name."""
    files = {_module_name_in(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree, top_level=False):
            for target in _imported_names(node, name, path.name == "__init__.py", files):
                yield path, node.lineno, name, _nearest_module(target, files) or target
        for line, target in _loaded_by_name(tree):
            yield path, line, name, _nearest_module(target, files) or target


def _module_name_in(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layering_violations(package_dir: Path = PACKAGE) -> list[str]:
    """One line per import that breaks :data:`FORBIDDEN`: the importing file and line, and the module."""
    out = []
    for path, line, importer, imported in import_edges(package_dir):
        src, dst = layer_of(importer), layer_of(imported)
        if dst != src and (dst in FORBIDDEN.get(src, ()) or dst in OUTSIDE):
            out.append(f"{path.relative_to(package_dir.parent)}:{line}: {importer} ({src}) imports {imported} "
                       f"({dst}), which the {src} layer must not import")
    return sorted(set(out))


def test_layers_import_only_what_they_build_on():
    bad = layering_violations()
    assert not bad, "imports across the layers of docs/design.md:\n" + "\n".join(bad)


def test_layering_sees_imports_in_functions_and_modules_loaded_by_name(tmp_path):
    pkg = tmp_path / PACKAGE.name
    for folder in ("method", "engine", "data", "convert"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .factory import create_model\n")
    (pkg / "factory.py").write_text("def create_model():\n    from .data import loader  # a core module\n")
    (pkg / "data" / "loader.py").write_text("import numpy\n\n\ndef f():\n    import experiments.ladder\n")
    (pkg / "method" / "loss.py").write_text("class A:\n    def f(self):\n        from ..engine import trainer\n")
    (pkg / "engine" / "trainer.py").write_text("from d3ssl_zoo.method import loss\n")  # allowed
    (pkg / "convert" / "cli.py").write_text("")
    (pkg / "cli.py").write_text('SUBCOMMAND_MODULES = (\n    "d3ssl_zoo.convert.cli",\n)\n')
    (pkg / "convert" / "export.py").write_text('import importlib\nimportlib.import_module("d3ssl_zoo.data.loader")\n')
    assert layering_violations(pkg) == [
        "d3ssl_zoo/convert/export.py:2: d3ssl_zoo.convert.export (convert) imports d3ssl_zoo.data.loader (data), "
        "which the convert layer must not import",
        "d3ssl_zoo/data/loader.py:5: d3ssl_zoo.data.loader (data) imports experiments.ladder (experiments), "
        "which the data layer must not import",
        "d3ssl_zoo/factory.py:2: d3ssl_zoo.factory (core) imports d3ssl_zoo.data.loader (data), "
        "which the core layer must not import",
        "d3ssl_zoo/method/loss.py:3: d3ssl_zoo.method.loss (method) imports d3ssl_zoo.engine.trainer (engine), "
        "which the method layer must not import",
    ]
    edges = {(importer, imported) for _, _, importer, imported in import_edges(pkg)}
    assert ("d3ssl_zoo.cli", "d3ssl_zoo.convert.cli") in edges  # a subcommand module loaded by its name
