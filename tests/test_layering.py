"""The import graph of emseg_rt runs one way, read from the source with `ast` (README "How the code is laid out").

Floors, lowest first (a module may import its own floor and the floors below, never a higher one):

    0  errors, checks, constants, the root package (its version)
    1  package, onnx_session, tiling, progress, io, kernels, metrics, data, weights
    2  models
    3  export
    4  engines
    5  runtime
    6  bench, training, clustering
    7  cli, demo, __main__, napari (the napari plugin: a user interface like the CLI, on the library's API)

Three rules, each failure naming the file, the line and the rule:

    floor   an import (module-level or inside a function) from a lower floor to a higher one;
    circle  modules that import each other round a circle (a strongly connected component of more than one
            module; every import counts, those inside functions too);
    local   an import inside a function, unless
            - it imports an optional dependency (OPTIONAL_DEPENDENCIES, or an emseg_rt module that imports one
              at module level) and says so with a comment containing "optional" on the import's line
              (`import h5py  # optional: the [hdf5] extra`), or
            - it is in a command module of the CLI (`emseg_rt.cli.*`, the top floor, which nothing imports) and
              says so with a comment containing "deferred" (`# deferred: CLI start-up`): a command loads the
              library when it runs, so `emseg-rt --help` and the light commands do not load torch, ONNX, dask
              and the rest (about 10 s more per start on a loaded 2-core machine). The floor and circle rules
              still count these imports, so a deferral hides nothing from them.

How an import becomes edges: `import a.b.c` and `from a.b import c` name module `a.b.c` when that is a module
(else the longest module prefix, `a.b`); relative imports are resolved against the importer's package;
`importlib.import_module("emseg_rt.x")` with a literal name counts as an import. Importing `emseg_rt.x.y` also
runs package `emseg_rt.x`'s `__init__`: that edge counts for circles when the importer lives outside
`emseg_rt.x` (inside it, the package is already being imported, so a package `__init__` that re-exports its
submodules is no circle unless a submodule imports back through the package's own name).
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "emseg_rt"
SOURCE_ROOT = Path(__file__).resolve().parents[1]

# The first name after `emseg_rt.` (a subpackage or a top-level module) → its floor; "" is the root __init__.
FLOORS: dict[str, int] = {
    "": 0, "errors": 0, "constants": 0, "checks": 0,
    "package": 1, "onnx_session": 1, "tiling": 1, "progress": 1, "io": 1, "kernels": 1, "metrics": 1,
    "data": 1, "weights": 1,
    "models": 2,
    "export": 3,
    "engines": 4,
    "runtime": 5,
    "bench": 6, "training": 6, "clustering": 6,
    "cli": 7, "demo": 7, "__main__": 7, "napari": 7,
}

# Third-party (or platform) modules emseg_rt may import inside a function: the pyproject extras, and fcntl
# (POSIX only). Everything else is a dependency every install has, imported at the top of the module.
OPTIONAL_DEPENDENCIES: dict[str, str] = {
    "tensorrt_rtx": "[rtx]", "tensorrt": "[rtx]", "tensorstore": "[n5]", "h5py": "[hdf5]", "tifffile": "[tiff]",
    "imagecodecs": "[tiff]", "fsspec": "[remote]", "triton": "[kernels]", "fcntl": "POSIX only",
    "bioimageio": "[bioimageio]",
}

OPTIONAL_COMMENT = re.compile(r"#.*\boptional\b", re.IGNORECASE)
DEFERRED_COMMENT = re.compile(r"#.*\bdeferred\b", re.IGNORECASE)
DEFERRING_PACKAGE = f"{PACKAGE}.cli"  # where a command may defer loading the library
# Light layers that may defer one heavy dependency (marked `# deferred`): reading a package and choosing its
# engine (`inspect`, `build`, a C++ host's tooling) load no torch; only querying or driving a GPU does
# (tests/test_package.py::test_package_readers_do_not_need_the_exporter).
LIGHT_DEFERRALS: dict[str, frozenset[str]] = {f"{PACKAGE}.engines": frozenset({"torch"})}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `importer` imports `target` at `path`:`line`."""

    importer: str
    target: str  # a dotted module name (emseg_rt's own) or a top-level third-party name
    path: Path
    line: int
    local: bool  # inside a function
    marked_optional: bool  # its lines carry a comment containing "optional"
    marked_deferred: bool  # its lines carry a comment containing "deferred"
    implicit: bool = False  # the package __init__ that importing a submodule runs first


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of `package` under `root`: dotted name → file (a package's name → its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _longest_module(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _import_names(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules one import statement (or literal importlib.import_module call) imports, by dotted name."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = []
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            names.append(candidate if candidate in modules else base)
    else:  # importlib.import_module("literal")
        names = [node.args[0].value]
    resolved = []
    for name in names:
        top = name.split(".")[0]
        resolved.append((_longest_module(name, modules) or name) if top == PACKAGE else top)
    return resolved


def _is_literal_import_module(node: ast.AST) -> bool:
    """`importlib.import_module("name")` or `import_module("name")` with a literal name."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    return name == "import_module" and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _ancestor_packages(target: str, importer: str) -> list[str]:
    """Package __init__s that importing `target` runs and that `importer` is not already inside."""
    parts = target.split(".")
    packages = [".".join(parts[:end]) for end in range(2, len(parts))]
    return [p for p in packages if not (importer == p or importer.startswith(p + "."))]


def read_imports(root: Path, package: str = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """All modules of `package` and every import in them (module-level and inside functions)."""
    modules = module_files(root, package)
    imports: list[Import] = []
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, local: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)) or _is_literal_import_module(child):
                    text = "\n".join(lines[child.lineno - 1: child.end_lineno])
                    marks = bool(OPTIONAL_COMMENT.search(text)), bool(DEFERRED_COMMENT.search(text))
                    for target in _import_names(child, module, is_package, modules):
                        imports.append(Import(module, target, path, child.lineno, local, *marks))
                        for init in _ancestor_packages(target, module) if target in modules else ():
                            imports.append(Import(module, init, path, child.lineno, local, *marks, implicit=True))
                visit(child, inside)

        visit(ast.parse(source, filename=str(path)), False)
    return modules, imports


def floor_of(module: str, package: str = PACKAGE) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1] if len(parts) > 1 else "")


def _where(imp: Import, root: Path) -> str:
    return f"{imp.path.relative_to(root)}:{imp.line}"


def floor_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Imports that run up the floors, and modules that have no floor."""
    modules, imports = read_imports(root, package)
    problems = [f"{path.relative_to(root)}:1: floor: module {name} has no floor (add it to FLOORS)"
                for name, path in modules.items() if floor_of(name, package) is None]
    for imp in imports:
        if imp.implicit or imp.target not in modules:
            continue
        low, high = floor_of(imp.importer, package), floor_of(imp.target, package)
        if low is not None and high is not None and high > low:
            problems.append(f"{_where(imp, root)}: floor: {imp.importer} (floor {low}) imports {imp.target} "
                            f"(floor {high}), a higher floor")
    return problems


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph` (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def circle_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Each circle of modules, with the imports that close it."""
    modules, imports = read_imports(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    problems = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        edges = sorted({f"{_where(imp, root)}: circle: {imp.importer} imports {imp.target}"
                        + (" (runs its package __init__)" if imp.implicit else "")
                        for imp in imports if imp.importer in members and imp.target in members
                        and imp.importer != imp.target})
        problems.append(f"circle of {len(component)} modules: {', '.join(component)}\n  " + "\n  ".join(edges))
    return problems


def _imports_optional_dependency(module: str, imports: list[Import]) -> bool:
    return any(imp.importer == module and not imp.local and imp.target in OPTIONAL_DEPENDENCIES for imp in imports)


def _light_deferral(importer: str, target: str) -> bool:
    return any((importer == layer or importer.startswith(layer + ".")) and target.split(".")[0] in deps
               for layer, deps in LIGHT_DEFERRALS.items())


def local_import_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Imports inside functions that are neither of an optional dependency marked `# optional` nor a CLI
    command's deferred import marked `# deferred`."""
    modules, imports = read_imports(root, package)
    problems: list[str] = []
    for imp in imports:
        if not imp.local or imp.implicit:
            continue
        optional = imp.target in OPTIONAL_DEPENDENCIES or (
            imp.target in modules and _imports_optional_dependency(imp.target, imports))
        if optional and imp.marked_optional:
            continue
        if imp.importer.startswith(DEFERRING_PACKAGE + ".") and imp.marked_deferred:
            continue
        if imp.marked_deferred and _light_deferral(imp.importer, imp.target):
            continue
        if optional:
            why = "an optional dependency: add a comment saying `# optional: ...` on its line"
        elif imp.importer.startswith(DEFERRING_PACKAGE + "."):
            why = "import it at the top of the module, or say `# deferred: CLI start-up` if it loads the library"
        else:
            why = "not an optional dependency: import it at the top of the module"
        problem = f"{_where(imp, root)}: local: {imp.importer} imports {imp.target} inside a function, {why}"
        if problem not in problems:  # `from x import a, b` is one statement
            problems.append(problem)
    return problems


def _report(problems: list[str]) -> str:
    return f"{len(problems)} violation(s):\n" + "\n".join(problems)


def test_every_import_runs_down_the_floors():
    problems = floor_violations(SOURCE_ROOT)
    assert not problems, _report(problems)


def test_the_napari_plugin_uses_the_library_not_the_cli():
    """The napari plugin shares floor 7 with the CLI but runs the library's API, never a CLI command."""
    _, imports = read_imports(SOURCE_ROOT)
    uses_cli = [f"{_where(imp, SOURCE_ROOT)}: {imp.importer} imports {imp.target}" for imp in imports
                if imp.importer.startswith(f"{PACKAGE}.napari") and imp.target.split(".")[:2] in
                ([PACKAGE, "cli"], [PACKAGE, "demo"], [PACKAGE, "__main__"])]
    assert not uses_cli, "\n".join(uses_cli)


def test_no_modules_import_each_other_round_a_circle():
    problems = circle_violations(SOURCE_ROOT)
    assert not problems, _report(problems)


def test_imports_inside_functions_are_optional_dependencies_only():
    problems = local_import_violations(SOURCE_ROOT)
    assert not problems, _report(problems)


def test_the_graph_sees_the_known_imports():
    """The checker reads the real tree: a handful of edges every version of the code has."""
    modules, imports = read_imports(SOURCE_ROOT)
    edges = {(imp.importer, imp.target) for imp in imports}
    assert len(modules) > 80
    assert ("emseg_rt.cli", "emseg_rt.cli.segment_cmd") in edges
    assert ("emseg_rt.package", "emseg_rt.errors") in edges


# The checker itself: a small package with one planted fault per rule, written under tmp_path.

def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


CLEAN = {
    "__init__.py": "from emseg_rt.errors import EmsegError\n",
    "errors.py": "class EmsegError(Exception):\n    pass\n",
    "io/__init__.py": "from emseg_rt.io.reader import read\n",
    "io/reader.py": """\
        import numpy as np

        from emseg_rt.errors import EmsegError


        def read(path):
            import h5py  # optional: the [hdf5] extra

            return np.asarray(h5py.File(path)["raw"])
        """,
    "models/__init__.py": "from .net import Net\n",
    "models/net.py": "from ..io import read\n\n\nclass Net:\n    pass\n",
    "runtime/__init__.py": "",
    "runtime/run.py": "import importlib\n\nimport emseg_rt.models.net\nfrom emseg_rt.models import Net\n\n"
                      "NET = importlib.import_module('emseg_rt.models.net')\n",
}


def test_the_checker_passes_a_clean_package(tmp_path):
    _write_package(tmp_path, CLEAN)
    assert floor_violations(tmp_path) == []
    assert circle_violations(tmp_path) == []
    assert local_import_violations(tmp_path) == []
    _, imports = read_imports(tmp_path)
    edges = {(imp.importer, imp.target) for imp in imports}
    assert ("emseg_rt.models.net", "emseg_rt.io") in edges  # relative `from ..io import read`
    assert ("emseg_rt.models", "emseg_rt.models.net") in edges  # relative `from .net import Net`
    assert ("emseg_rt.runtime.run", "emseg_rt.models.net") in edges
    run_lines = {imp.line for imp in imports if imp.importer == "emseg_rt.runtime.run" and imp.target.endswith("net")}
    assert run_lines == {3, 6}  # `import emseg_rt.models.net` and the literal importlib.import_module


def test_the_checker_catches_a_planted_upward_import(tmp_path):
    planted = dict(CLEAN)
    planted["models/net.py"] = "from ..io import read\n\n\ndef run():\n    from emseg_rt.runtime import run\n"
    _write_package(tmp_path, planted)
    problems = floor_violations(tmp_path)
    assert problems == [f"{Path(PACKAGE, 'models', 'net.py')}:5: floor: emseg_rt.models.net (floor 2) imports "
                        "emseg_rt.runtime.run (floor 5), a higher floor"]
    assert any(p.startswith(f"{Path(PACKAGE, 'models', 'net.py')}:5: local:")
               for p in local_import_violations(tmp_path))


def test_the_checker_catches_a_planted_circle(tmp_path):
    planted = dict(CLEAN)
    planted["io/writer.py"] = "from emseg_rt.io.reader import read\n"
    planted["io/reader.py"] = "import emseg_rt.io.writer\n"
    _write_package(tmp_path, planted)
    problems = circle_violations(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("circle of 2 modules: emseg_rt.io.reader, emseg_rt.io.writer")
    assert f"{Path(PACKAGE, 'io', 'writer.py')}:1: circle: emseg_rt.io.writer imports emseg_rt.io.reader" in problems[0]
    assert f"{Path(PACKAGE, 'io', 'reader.py')}:1: circle: emseg_rt.io.reader imports emseg_rt.io.writer" in problems[0]


def test_the_checker_catches_a_circle_through_a_package_init(tmp_path):
    """models.extra → runtime.other runs runtime/__init__, which imports models.extra back through runtime.run."""
    planted = dict(CLEAN)
    planted["runtime/__init__.py"] = "from emseg_rt.runtime.run import Net\n"
    planted["runtime/other.py"] = ""
    planted["models/extra.py"] = "import emseg_rt.runtime.other\n"
    planted["runtime/run.py"] = "from emseg_rt.models.net import Net\nimport emseg_rt.models.extra\n"
    _write_package(tmp_path, planted)
    problems = circle_violations(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("circle of 3 modules: emseg_rt.models.extra, emseg_rt.runtime, emseg_rt.runtime.run")
    assert "emseg_rt.models.extra imports emseg_rt.runtime (runs its package __init__)" in problems[0]


@pytest.mark.parametrize("line, allowed", [
    ("import h5py  # optional: the [hdf5] extra", True),
    ("import h5py", False),  # optional, but it does not say so
    ("import json  # optional", False),  # the standard library is always there
    ("import numpy as np  # optional", False),  # a dependency every install has
    ("from emseg_rt.errors import EmsegError  # optional", False),  # emseg_rt's own module, no optional dependency
    ("from emseg_rt.io import reader  # optional: h5py", True),  # a module that imports an optional dependency
    ("from emseg_rt.runtime import run  # deferred: CLI start-up", False),  # deferral is the CLI's alone
])
def test_the_checker_allows_only_optional_imports_inside_functions(tmp_path, line, allowed):
    planted = dict(CLEAN)
    planted["io/reader.py"] = "import h5py\n"  # at module level: emseg_rt.io.reader needs the [hdf5] extra
    planted["runtime/run.py"] = f"def run():\n    {line}\n"
    _write_package(tmp_path, planted)
    problems = local_import_violations(tmp_path)
    assert (problems == []) is allowed, problems
    if not allowed:
        assert problems[0].startswith(f"{Path(PACKAGE, 'runtime', 'run.py')}:2: local: emseg_rt.runtime.run imports")


@pytest.mark.parametrize("line, allowed", [
    ("import torch  # deferred: package readers stay light", True),
    ("import torch", False),
    ("import onnx  # deferred", False),  # the engine layer defers torch alone
])
def test_the_engine_layer_may_defer_torch_alone(tmp_path, line, allowed):
    planted = dict(CLEAN)
    planted["engines/__init__.py"] = ""
    planted["engines/select.py"] = f"def gpu():\n    {line}\n"
    _write_package(tmp_path, planted)
    assert (local_import_violations(tmp_path) == []) is allowed


@pytest.mark.parametrize("line, allowed", [
    ("from emseg_rt.runtime import run  # deferred: CLI start-up", True),
    ("from emseg_rt.runtime import run", False),
    ("import json  # deferred", True),  # legal, if pointless: the floor and circle rules still see it
])
def test_a_cli_command_may_defer_loading_the_library(tmp_path, line, allowed):
    planted = dict(CLEAN)
    planted["cli/__init__.py"] = "from emseg_rt.cli import segment_cmd\n"
    planted["cli/segment_cmd.py"] = f"def segment():\n    {line}\n"
    _write_package(tmp_path, planted)
    assert (local_import_violations(tmp_path) == []) is allowed
    assert floor_violations(tmp_path) == [] and circle_violations(tmp_path) == []
