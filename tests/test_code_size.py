"""Functions fit on a screen and take few parameters (README "How the code is laid out"), read from the source.

No function in emseg_rt/ is longer than 60 lines (def line to last line, docstring included), except the phantom
generator; no public function outside the CLI takes more than 12 parameters (self/cls not counted), except the
keyword API `segment_volume` keeps for users (it builds one `SegmentRequest`). CLI commands take one parameter
per option; a Triton kernel takes one per pointer and stride (private, `_..._kernel`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "emseg_rt"
MAX_LINES, MAX_PARAMS = 60, 12
LONG_ALLOWED = {"emseg_rt/data/phantom.py:generate_phantom"}
MANY_PARAMS_ALLOWED = {"emseg_rt/runtime/segment.py:segment_volume"}


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        rel = path.relative_to(PACKAGE_ROOT.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((rel, node))
    return found


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (1 if names and names[0] in ("self", "cls") else 0)


def test_no_function_is_longer_than_60_lines():
    too_long = [f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                for rel, node in _functions()
                if node.end_lineno - node.lineno + 1 > MAX_LINES and f"{rel}:{node.name}" not in LONG_ALLOWED]
    assert not too_long, "functions over 60 lines:\n" + "\n".join(too_long)


def test_no_public_function_outside_the_cli_takes_more_than_12_parameters():
    too_many = [f"{rel}:{node.lineno} {node.name}: {_parameter_count(node)} parameters"
                for rel, node in _functions()
                if not node.name.startswith("_") and not rel.startswith("emseg_rt/cli/")
                and _parameter_count(node) > MAX_PARAMS and f"{rel}:{node.name}" not in MANY_PARAMS_ALLOWED]
    assert not too_many, "public functions over 12 parameters:\n" + "\n".join(too_many)


def test_the_checks_see_what_they_measure():
    """The walk finds the known exceptions, so an empty list above means the rule held, not that nothing was read."""
    names = {f"{rel}:{node.name}": node for rel, node in _functions()}
    assert names["emseg_rt/data/phantom.py:generate_phantom"].end_lineno - \
        names["emseg_rt/data/phantom.py:generate_phantom"].lineno + 1 > MAX_LINES
    assert _parameter_count(names["emseg_rt/runtime/segment.py:segment_volume"]) > MAX_PARAMS
