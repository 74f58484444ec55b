"""`emseg-rt models` from the installed console script, and the one-line error contract."""

import json
import shutil
import subprocess
import sys

import pytest

CLI = [shutil.which("emseg-rt")] if shutil.which("emseg-rt") else [sys.executable, "-m", "emseg_rt"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_models_json_lists_every_model_with_the_documented_keys():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert {r["name"] for r in records} >= {"scsam-vit-h", "vanilla-sam-tiny", "mae-star-vit-b"}
    for record in records:
        assert set(record) == {"name", "family", "params", "gflops_per_slice", "tile", "classes"}
    scsam = next(r for r in records if r["name"] == "scsam-vit-h")
    assert scsam["tile"] == 1024 and scsam["classes"] == ["nucleus", "mitochondria", "granules"]
    assert scsam["params"] > 637_026_048


def test_models_table_is_printed():
    result = run_cli("models")
    assert result.returncode == 0 and "scsam-vit-h" in result.stdout


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
