"""`emseg-rt models` from the installed console script, and the one-line error contract."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from emseg_rt.models import list_models

CLI = [shutil.which("emseg-rt")] if shutil.which("emseg-rt") else [sys.executable, "-m", "emseg_rt"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


LISTED = {"name", "family", "size", "tile", "classes", "description"}


def test_models_json_lists_every_model_with_the_documented_keys():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["name"] for r in records] == list_models()  # the registry's models, in its order
    for record in records:
        assert set(record) == LISTED
    scsam = next(r for r in records if r["name"] == "scsam-vit-h")
    assert scsam["tile"] == 1024 and scsam["classes"] == ["nucleus", "mitochondria", "granules"]
    assert scsam["family"] == "scsam" and "FAFM" in scsam["description"]


def test_models_counts_adds_parameters_and_flops():
    result = run_cli("models", "--json", "--counts")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(records["scsam-vit-h"]) == LISTED | {"params", "gflops_per_slice"}
    assert records["scsam-vit-h"]["params"] > 637_026_048  # SAM ViT-H alone has 637,026,048
    assert records["scsam-vit-h"]["gflops_per_slice"] > records["scsam-vit-b"]["gflops_per_slice"] > 0


def test_models_table_is_printed():
    result = run_cli("models")
    assert result.returncode == 0 and "scsam-vit-h" in result.stdout


def test_models_in_a_pipe_prints_every_name_whole_however_narrow_the_terminal():
    """In a log or pipe (stdout not a terminal) the table is plain text at its natural width: no name is cut to
    'vanilla-…' or folded, even where COLUMNS says the terminal is 40 wide."""
    result = run_cli("models", env={**os.environ, "COLUMNS": "40"})
    assert result.returncode == 0, result.stderr
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines()
             if line.startswith("|")]
    assert cells[0][:2] == ["name", "family"]
    assert [row[0] for row in cells[2:]] == list_models()
    assert "…" not in result.stdout and "\x1b[" not in result.stdout  # nothing cut, no terminal styles


@pytest.mark.parametrize("args", [("models", "--no-such-flag"), ("no-such-command",)])
def test_bad_usage_exits_non_zero_without_traceback(args):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_version_prints_the_installed_version():
    import importlib.metadata

    import emseg_rt

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"emseg-rt {emseg_rt.__version__}"
    assert emseg_rt.__version__ == importlib.metadata.version("emseg-rt")  # the package's version, not a copy
