"""`emseg-rt bench`: records for every Table 5 row and backend, reports, and clear errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

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


def run_bench_cli(tmp_path, name: str, models: str, backends: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [*CLI, "bench", "--size", "tiny", "--models", models, "--backends", backends, "--device", "cpu",
         "--iters", "2", "--warmup", "1", "--no-breakdown", "--quiet", *extra,
         "--json", str(out), "--markdown", str(tmp_path / f"{name}.md"), "--plot", str(tmp_path / f"{name}.png")],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


# ScSAM (the seed paper, ../shared/seeds/001_*.txt), §4.5 Table 5 "Comparison results of training and
# inference time", inference seconds per image: Vanilla SAM 0.321, Vanilla SAM2 0.273, SurgicalSAM 0.374,
# MAE* 0.144, SAM* 0.375, ScSAM 0.457. Quoted here, by the paper's method names, so the bench's paper column
# is checked against the paper and not against its own constant.
PAPER_TABLE5 = {"Vanilla SAM": 0.321, "Vanilla SAM2": 0.273, "SurgicalSAM": 0.374, "MAE*": 0.144, "SAM*": 0.375,
                "ScSAM": 0.457}
FAMILY_OF_METHOD = {"Vanilla SAM": "vanilla-sam", "Vanilla SAM2": "vanilla-sam2", "SurgicalSAM": "surgicalsam",
                    "MAE*": "mae-star", "SAM*": "sam-star", "ScSAM": "scsam"}


def test_quoted_table5_is_the_papers():
    """The quote above equals Table 5 of the seed paper where the paper's text is at hand."""
    from pathlib import Path

    seeds = sorted((Path(__file__).resolve().parents[2] / "shared" / "seeds").glob("001_*.txt"))
    if not seeds:
        pytest.skip("the seed paper (../shared/seeds/001_*.txt) is not beside this checkout")
    text = seeds[0].read_text()
    table = text[text.index("Table 5. Comparison results of training and inference time"):]
    rows = {}
    for line in table.splitlines()[1:]:
        cells = line.split("\t")
        if len(cells) == 3 and cells[0] != "Method":
            rows[cells[0].strip()] = float(cells[2])
        elif rows and not line.strip():
            break
    assert rows == PAPER_TABLE5


def test_bench_tiny_cli_writes_a_record_per_model_and_backend(tmp_path):
    """Every Table-5 row on the eager backend (and tensorrt, unavailable here); the exported-package backend on
    one row (every family's export and parity are tested in test_export.py, test_sam2.py, test_samda.py)."""
    rows = [FAMILY_OF_METHOD[method] for method in PAPER_TABLE5]
    report = run_bench_cli(tmp_path, "rows", ",".join(rows), "torch-eager-fp32,tensorrt", "--no-agreement")
    assert report["machine"]["device"] == "cpu" and report["machine"]["libraries"]["torch"]
    packaged = run_bench_cli(tmp_path, "packaged", "scsam", "torch-eager-fp32,onnxruntime")
    records = {(r["model"], r["backend"]): r for r in report["records"] + packaged["records"]}
    assert {model for model, _ in records} == set(rows)  # one row per method of the paper's table
    for family, backend in [(f, "torch-eager-fp32") for f in rows] + [("scsam", "onnxruntime")]:
        record = records[family, backend]
        assert record["status"] == "ok", record
        _assert_times_follow_from_samples(record)
    for method, seconds in PAPER_TABLE5.items():
        assert records[FAMILY_OF_METHOD[method], "torch-eager-fp32"]["paper_s"] == seconds, method
    for family in rows:
        assert records[family, "tensorrt"]["status"] == "unavailable"
        assert "GPU" in records[family, "tensorrt"]["reason"]
    eager, ort = records["scsam", "torch-eager-fp32"], records["scsam", "onnxruntime"]
    eager_here = {r["model"]: r for r in packaged["records"] if r["backend"] == "torch-eager-fp32"}["scsam"]
    assert ort["speedup_vs_eager"] == pytest.approx(eager_here["median_s_per_slice"] / ort["median_s_per_slice"])
    assert eager["speedup_vs_eager"] == 1.0
    lines = (tmp_path / "rows.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | paper (s) |"))
    table = lines[header + 2:header + 2 + len(rows)]  # the main table: one row per model, after | --- |
    paper_column = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in table}
    assert paper_column == {FAMILY_OF_METHOD[method]: seconds for method, seconds in PAPER_TABLE5.items()}
    assert (tmp_path / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _assert_times_follow_from_samples(record: dict) -> None:
    """A record's times are its measured samples' statistics: positive, median and p90 of `samples_s` (numpy),
    per slice = per batch / batch, throughput its inverse, TFLOP/s = the slice's GFLOPs over its seconds, and
    the speed-up against the paper = the paper's seconds over ours."""
    samples = np.asarray(record["samples_s"])
    assert len(samples) == record["iters"] == 2 and (samples > 0).all()
    batch = record["batch"]
    assert record["median_s_per_batch"] == pytest.approx(float(np.median(samples)))
    assert record["median_s_per_slice"] == pytest.approx(float(np.median(samples)) / batch)
    assert record["p90_s_per_slice"] == pytest.approx(float(np.percentile(samples, 90)) / batch)
    assert record["throughput_slices_per_s"] == pytest.approx(1 / record["median_s_per_slice"])
    assert record["gflops_per_slice"] > 0
    tflops = record["gflops_per_slice"] / record["median_s_per_slice"] / 1e3
    assert record["achieved_tflops"] == pytest.approx(tflops)
    assert record["speedup_vs_paper"] == pytest.approx(record["paper_s"] / record["median_s_per_slice"])


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--size", "vit-x"), "--size 'vit-x'"), (("--backends", "warp-drive"), "unknown warp-drive"),
     (("--batch", "one"), "--batch 'one'"), (("--models", "scsam2"), "no scsam2-tiny"),
     (("--weights", "no-such-head.pt"), "no-such-head.pt"),
     (("--models", "scsam,vanilla-sam", "--weights", "emseg_rt/weights/scsam-phantom.pt"), "apply to one model"),
     (("--models", "scsam", "--weights", "pyproject.toml"), "not a readable weights-only torch checkpoint")],
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
    agreement = {r["backend"]: r["label_agreement_vs_fp32"] for r in result.records if r["status"] == "ok"}
    assert agreement["torch-eager-fp32"]["agreement"] == 1.0  # the fp32 reference against itself
    assert agreement["onnxruntime"]["agreement"] >= 0.995 and agreement["onnxruntime"]["logits_rel_error"] < 1e-4
    rates = set(result.matmul_tflops)  # the CPU's measured ceilings, one per precision (int8: where torch has one)
    assert {"fp32", "bf16"} <= rates <= {"fp32", "bf16", "int8"}
    best = result.matmul_tflops  # one ceiling per precision: the best of the start's and every record's
    for record in (r for r in result.records if r["status"] == "ok"):
        here = record["matmul_tflops_here"]
        assert set(here) == rates == set(record["fraction_of_matmul_rates"])
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


def test_bench_auto_on_a_cpu_times_every_cpu_path():
    """`--backends auto` on a CPU: eager, torch fp32, ONNX Runtime fp32, fused attention and int8, and torch bf16
    exactly where the CPU computes bf16 natively (issue 30.5)."""
    from emseg_rt.bench.runners import default_backends
    from emseg_rt.runtime.devices import cpu_has_bf16

    auto = default_backends("cpu")
    assert {"torch-eager-fp32", "torch-fp32", "onnxruntime", "onnxruntime-fp32-fused", "onnxruntime-int8"} <= set(auto)
    assert ("torch-bf16" in auto) == cpu_has_bf16() and "tensorrt" not in auto


def test_bench_weights_load_into_every_backend_and_the_agreement_reference(tmp_path):
    """--weights: a scsam-tiny whose head is re-drawn (another seed) is what both the benched backends and the
    fp32 reference of the label agreement run: torch-fp32 agrees with eager on it, the records name its digest,
    and the labels differ from the seeded model's (so a reference left on the seeded weights could not agree)."""
    import hashlib

    import torch

    from emseg_rt.models import build_model
    from emseg_rt.runtime.agreement import agreement_tiles

    model = build_model("scsam-tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        for parameter in model.head.parameters():
            parameter.data.normal_(0.0, 0.2)
    weights = tmp_path / "redrawn.pt"
    torch.save(model.state_dict(), weights)
    tiles = torch.from_numpy(agreement_tiles(model.config.tile, 2))
    with torch.no_grad():
        redrawn, seeded = model(tiles), build_model("scsam-tiny")(tiles)
    assert not torch.equal(redrawn["labels"], seeded["labels"])  # the weights change the labels

    report = run_bench_cli(tmp_path, "weights", "scsam", "torch-eager-fp32,torch-fp32", "--weights", str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert report["config"]["checkpoints"] == [{"file": "redrawn.pt", "sha256": digest}]
    assert f"`redrawn.pt` (sha256 `{digest[:16]}…`)" in (tmp_path / "weights.md").read_text()
    for record in report["records"]:
        assert record["status"] == "ok", record
        assert record["label_agreement_vs_fp32"]["agreement"] >= 0.999, record["label_agreement_vs_fp32"]
