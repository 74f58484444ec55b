"""benchmarks/gpu_suite.sh --dry-run: the one-command GPU suite runs every step (table5, volume, kernels, gputests) at
tiny size on the CPU through the project's own entry points, writes its result files and a status table, and
refuses an unknown option."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"


def run_suite(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SUITE), *args], capture_output=True, text=True, env=env, timeout=600)


def test_dry_run_runs_every_step_and_writes_results(tmp_path):
    proc = run_suite("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "gpu_suite-status.tsv") as f:
        status = {row["step"]: row["status"] for row in csv.DictReader(f, delimiter="\t")}
    assert status == {"setup": "ok", "table5": "ok", "volume": "ok", "kernels": "ok", "gputests": "ok",
                      "rtx": "skipped"}
    gputests = (tmp_path / "dry-run-cpu-gputests.txt").read_text()
    assert "skipped" in gputests and "failed" not in gputests  # the CUDA tests, collected and skipped here
    table5 = json.loads(next(tmp_path.glob("*-table5-tiny.json")).read_text())
    assert any(r.get("model", "").startswith("scsam") for r in table5["records"])
    volume = json.loads((tmp_path / "dry-run-cpu-volume_throughput.json").read_text())
    assert volume["volumes"][0]["slices_per_second"] > 0 and volume["settings"]["device"] == "cpu"
    kernels = json.loads(next(tmp_path.glob("nearest_centroid-*.json")).read_text())
    assert all(r["impls"] for r in kernels["records"])


def test_unknown_option_is_one_line_and_exit_2(tmp_path):
    proc = run_suite("--frobnicate")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown option" in proc.stderr
    proc = run_suite("--only", "tabel5", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown step tabel5" in proc.stderr
    proc = run_suite("--only")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--only needs a value" in proc.stderr
    assert not (tmp_path / "gpu_suite-status.tsv").exists()  # refused before anything ran


def test_only_runs_the_steps_named_and_adds_to_the_status_table(tmp_path):
    """`--only` lets a session with a per-call time limit run the suite one step per call."""
    (tmp_path / "gpu_suite-status.tsv").write_text("step\tstatus\tseconds\tdetail\ntable5\tok\t1\t\n")
    proc = run_suite("--dry-run", "--only", "kernels", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "gpu_suite-status.tsv") as f:
        steps = [row["step"] for row in csv.DictReader(f, delimiter="\t")]
    assert steps == ["table5", "setup", "kernels"]
