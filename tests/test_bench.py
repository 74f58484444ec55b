"""`emseg-rt bench`: records for every Table 5 row and backend, reports, and clear errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from emseg_rt.bench.table5 import PAPER_ROWS
from emseg_rt.bench.timing import measure_latency, percentile
from emseg_rt.cli import main

CLI = [shutil.which("emseg-rt")] if shutil.which("emseg-rt") else [sys.executable, "-m", "emseg_rt"]


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(0).random(17))
    for q in (0, 10, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_measure_latency_warms_up_then_times_each_call():
    calls = []
    stats = measure_latency(lambda: calls.append(1), "cpu", warmup=2, iters=5)
    assert len(calls) == 7 and stats.iters == 5 and len(stats.samples_s) == 5
    assert 0 <= stats.median_s <= stats.p90_s


def run_bench_cli(tmp_path, name: str, models: str, backends: str) -> dict:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [*CLI, "bench", "--size", "tiny", "--models", models, "--backends", backends, "--device", "cpu",
         "--iters", "2", "--warmup", "1", "--no-breakdown", "--quiet",
         "--json", str(out), "--markdown", str(tmp_path / f"{name}.md"), "--plot", str(tmp_path / f"{name}.png")],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


def test_bench_tiny_cli_writes_a_record_per_model_and_backend(tmp_path):
    """Every Table-5 row on the eager backend (and tensorrt, unavailable here); the exported-package backend on
    one row (every family's export and parity are tested in test_export.py, test_sam2.py, test_samda.py)."""
    assert len(PAPER_ROWS) == 6
    report = run_bench_cli(tmp_path, "rows", ",".join(PAPER_ROWS), "torch-eager-fp32,tensorrt")
    assert report["machine"]["device"] == "cpu" and report["machine"]["libraries"]["torch"]
    packaged = run_bench_cli(tmp_path, "packaged", "scsam", "torch-eager-fp32,onnxruntime")
    records = {(r["model"], r["backend"]): r for r in report["records"] + packaged["records"]}
    for family, backend in [(f, "torch-eager-fp32") for f in PAPER_ROWS] + [("scsam", "onnxruntime")]:
        record = records[family, backend]
        assert record["status"] == "ok", record
        assert 0 < record["median_s_per_slice"] <= record["p90_s_per_slice"]
        assert record["gflops_per_slice"] > 0 and record["achieved_tflops"] > 0
        assert record["paper_s"] is not None
    for family in PAPER_ROWS:
        assert records[family, "tensorrt"]["status"] == "unavailable"
        assert "GPU" in records[family, "tensorrt"]["reason"]
    assert {r["model"]: r["speedup_vs_eager"] for r in packaged["records"]
            if r["backend"] == "onnxruntime"}["scsam"] > 0
    markdown = (tmp_path / "rows.md").read_text()
    assert "| scsam | 0.4570 |" in markdown
    assert (tmp_path / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--size", "vit-x"), "--size 'vit-x'"), (("--backends", "warp-drive"), "unknown warp-drive"),
     (("--batch", "one"), "--batch 'one'"), (("--models", "scsam2"), "no scsam2-tiny")],
)
def test_bench_bad_options_fail_with_one_line(args, message, monkeypatch, capsys):
    options = {"--size": "tiny", "--device": "cpu", "--backends": "torch-eager-fp32", **dict(zip(args[::2], args[1::2]))}
    argv = ["emseg-rt", "bench", *[item for pair in options.items() for item in pair]]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bench_times_the_backend_segment_runs(tmp_path):
    """The same model, backend and precision give the same backend identity (graph, provider, precision,
    torch mode) in a bench record and in a segment report; the per-tile times are compared by
    benchmarks/bench_vs_segment.py, not here (timing belongs in benchmarks)."""
    from emseg_rt.bench.table5 import BenchConfig, run_bench
    from emseg_rt.io import write_ome_image
    from emseg_rt.runtime import segment_volume

    result = run_bench(BenchConfig(models=("scsam",), size="tiny", backends=("torch-eager-fp32", "torch-bf16",
                                                                              "onnxruntime"),
                                   warmup=0, iters=1, device="cpu", breakdown=False))
    bench_identity = {r["backend"]: r["backend_identity"] for r in result.records}
    assert set(result.matmul_tflops) == {"fp32", "bf16"}  # the CPU's measured ceilings, one per precision
    best = result.matmul_tflops  # one ceiling per precision: the best of the start's and every record's
    for record in (r for r in result.records if r["status"] == "ok"):
        here = record["matmul_tflops_here"]
        assert set(here) == {"fp32", "bf16"} == set(record["fraction_of_matmul_rates"])
        assert all(best[name] >= max(rate, result.matmul_tflops_start[name]) for name, rate in here.items())
        assert record["fraction_of_matmul_peak"] == record["achieved_tflops"] / best[record["precision"]]
        assert record["fraction_of_matmul_rates"]["bf16"] == record["achieved_tflops"] / best["bf16"]
    src = write_ome_image(tmp_path / "in.zarr", np.random.default_rng(4).integers(0, 256, (1, 96, 96), np.uint8))
    for name, backend, precision, fast in (("torch-eager-fp32", "torch", "fp32", False),
                                           ("torch-bf16", "torch", "bf16", True),
                                           ("onnxruntime", "onnxruntime", "fp32", True)):
        from emseg_rt.runtime import load_backend

        engine = load_backend("scsam-tiny", backend, "cpu", precision, fast=fast)
        report = segment_volume(src, tmp_path / f"{name}.zarr", backend=engine)
        assert report.backend_identity == bench_identity[name], name
        assert report.per_tile_seconds > 0
