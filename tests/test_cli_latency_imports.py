"""The CLI answers at once: starting it, and its light commands, load none of the heavy libraries.

`emseg-rt --help`, `--version`, `models` and a one-line error on a bad input path import typer, rich and the
small emseg_rt modules only; torch, ONNX (Runtime), zarr, timm and dask load inside the commands that run models
or read data (`# deferred` imports in emseg_rt/cli/). Each case runs in a fresh interpreter and reads
`sys.modules` afterwards: a regression guard, not a timing (benchmarks/cli_latency.py times it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "onnx", "zarr", "timm", "dask", "torchvision")

PROBE = """
import contextlib, io, json, sys
args, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2])
code, err = None, io.StringIO()
if args is not None:
    from emseg_rt.cli import main
    sys.argv = ["emseg-rt", *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
else:
    import emseg_rt.cli
heavy = sorted(name for name in watched if name in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "stderr": err.getvalue()}))
"""


def probe(args: list[str] | None) -> dict:
    """Run `emseg-rt ARGS` (or only `import emseg_rt.cli` for None) in a fresh interpreter: exit code, stderr and
    the heavy modules it loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    assert probe(None)["heavy"] == []


@pytest.mark.parametrize("args, code, error", [
    (["--help"], 0, None),
    (["--version"], 0, None),
    (["models"], 0, None),
    (["models", "--json"], 0, None),
    (["segment", "--help"], 0, None),
    # the readers' own one-line error, said before anything loads
    (["segment", "/nonexistent/in.zarr", "--out", "/nonexistent/out.zarr"], 2,
     "input /nonexistent/in.zarr does not exist"),
    (["segment", "in.zarr", "--batch", "many"], 2, "--batch"),  # a usage error typer finds
])
def test_light_commands_load_no_heavy_library(args, code, error):
    result = probe(args)
    assert result["code"] == code, result["stderr"]
    assert result["heavy"] == []
    if error is not None:
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("emseg-rt: error: ") and error in lines[0], lines
