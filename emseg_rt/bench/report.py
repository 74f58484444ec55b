"""Bench results as JSON, a markdown table with the paper's column beside ours, and a PNG bar chart.

Where they go follows every command's output rule (`emseg_rt.io.outputs`): `check_report_paths` refuses, before
the run, a missing or unwritable folder, a directory, an existing file without `--overwrite`, two options naming
one file and a plot format matplotlib cannot write; the writers write a temporary sibling and rename it, so a
failed write (disk full) is one line and leaves any old file as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from emseg_rt.bench.table5 import PAPER_TABLE5_SECONDS, BenchResult, weights_record
from emseg_rt.errors import EmsegError
from emseg_rt.io.outputs import check_distinct, check_output_file, write_file_atomic


def plot_format(path: Path) -> str:
    """The image format of a --plot path, from its suffix (none: png); EmsegError for one matplotlib cannot write."""
    suffix = path.suffix[1:].lower() or "png"
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise EmsegError(f"--plot {path}: matplotlib cannot write .{suffix} images; use one of "
                         f"{', '.join('.' + name for name in sorted(formats))}")
    return suffix


def check_report_paths(json_path: Path | None, markdown_path: Path | None, plot_path: Path | None,
                       overwrite: bool = False) -> None:
    """Before a run: each given report path may be written (`io.outputs.check_output_file`), no two name the
    same file, and the plot's format is one matplotlib writes. One-line EmsegError otherwise."""
    paths = {"--json": json_path, "--markdown": markdown_path, "--plot": plot_path}
    check_distinct(paths)
    for option, path in paths.items():
        if path is not None:
            check_output_file(path, option, overwrite)
    if plot_path is not None:
        plot_format(plot_path)


def write_json(result: BenchResult, path: Path) -> None:
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    write_file_atomic(path, lambda tmp: tmp.write_text(text), "--json")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value < 10 else f"{value:.1f}"


def _batch1(result: BenchResult, family: str, backend: str) -> dict[str, object] | None:
    for record in result.records:
        if record["model"] == family and record["backend"] == backend and record["batch"] == min(result.config.batches):
            return record
    return None


def markdown_table(result: BenchResult) -> str:
    """Per-image seconds (median, smallest batch) per backend beside ScSAM Table 5, plus speed-ups; then every
    measurement, the ScSAM breakdown and the matmul ceilings."""
    cfg = result.config
    machine = result.machine
    lines = [
        f"# ScSAM Table 5 reproduction: `--size {cfg.size}` on {machine['device_name']} ({cfg.device})",
        "",
        f"Measured {machine['date']}; batch {min(cfg.batches)}, median of {cfg.iters} after {cfg.warmup} warm-up; "
        f"seconds per {'1024²' if cfg.size != 'tiny' else 'tiny-config'} slice. Paper column: ScSAM Table 5 "
        "(RTX 3090, PyTorch 1.11, ViT-H). Speed-up is against `torch-eager-fp32` in this same run.",
        "",
    ]
    if cfg.checkpoints:  # named with their digests, so a reader knows which weights the agreement measured
        weights = [f"`{w['file']}` (sha256 `{w['sha256'][:16]}…`)" for w in map(weights_record, cfg.checkpoints)]
        lines += [f"Weights: {', '.join(weights)}, loaded by every backend and by the fp32 reference.", ""]
    header = ["model", "paper (s)"] + [f"{b} (s)" for b in cfg.backend_names] + ["best speed-up vs eager"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [_paper_row(result, family) for family in cfg.models]
    lines += _problems(result) + _measurements(result) + _breakdown(result) + _ceilings(result)
    return "\n".join(lines) + "\n"


def _paper_row(result: BenchResult, family: str) -> str:
    """One row of the main table: the paper's seconds, ours per backend, the best speed-up."""
    row = [family, _seconds(PAPER_TABLE5_SECONDS.get(family))]
    best = None
    for backend in result.config.backend_names:
        record = _batch1(result, family, backend)
        if record is None or record["status"] != "ok":
            row.append("n/a" if record is None else record["status"])
            continue
        row.append(_seconds(record["median_s_per_slice"]))  # type: ignore[arg-type]
        speedup = record.get("speedup_vs_eager")
        if speedup is not None and (best is None or speedup > best[0]):
            best = (speedup, backend)
    row.append("–" if best is None else f"{best[0]:.2f}× ({best[1]})")
    return "| " + " | ".join(row) + " |"


def _problems(result: BenchResult) -> list[str]:
    """Lines naming the backends unavailable here and the measurements that failed."""
    unavailable = {r["backend"]: r.get("reason") for r in result.records if r["status"] == "unavailable"}
    failed = [(r["model"], r["backend"], r.get("reason")) for r in result.records if r["status"] == "failed"]
    if not unavailable and not failed:
        return []
    return ([""] + [f"- `{backend}` unavailable: {reason}" for backend, reason in unavailable.items()]
            + [f"- `{backend}` failed on {model}: {reason}" for model, backend, reason in failed])


def _measurements(result: BenchResult) -> list[str]:
    """The table of every successful measurement (all batches), with memory and matmul fractions."""
    ok = [r for r in result.records if r["status"] == "ok"]
    if not ok:
        return []
    lines = ["", "## Every measurement", "",
             "Peak host MB: the process's peak resident memory while the timed calls ran (model loaded; "
             "loading and export excluded). Peak device MB: torch's peak CUDA allocation (torch backends).",
             "",
             "Fractions: the achieved rate (model FLOPs / median time) over the best dense matmul rate "
             "this run measured (at its start and right after every record's timed calls), for the "
             "record's own precision and for each measured precision.",
             "",
             "Labels vs fp32: agreement with `torch-eager-fp32` on phantom tiles (bench/agreement.py), raw (all "
             "pixels) / decided (pixels whose fp32 margin exceeds the backend's largest logit error, and their "
             "share); with random weights the class logits are nearly tied and raw measures the weights.",
             "",
             "| model | backend | precision | batch | median s/slice | p90 s/slice | slices/s | peak host MB | "
             "peak device MB | achieved TFLOP/s | fraction of matmul peak | fraction by precision | labels vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        device_mb = "–" if r["peak_device_mb"] is None else f"{r['peak_device_mb']:.0f}"
        fraction = "–" if r["fraction_of_matmul_peak"] is None else f"{r['fraction_of_matmul_peak']:.3f}"
        by_precision = ", ".join(f"{name} {value:.3f}" for name, value in
                                 r.get("fraction_of_matmul_rates", {}).items()) or "–"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch']} | {_seconds(r['median_s_per_slice'])} | "
            f"{_seconds(r['p90_s_per_slice'])} | {r['throughput_slices_per_s']:.3f} | {r['peak_host_mb']:.0f} | "
            f"{device_mb} | {r['achieved_tflops']:.4f} | {fraction} | {by_precision} | "
            f"{agreement_text(r.get('label_agreement_vs_fp32'))} |"
        )
    return lines


def agreement_text(numbers: dict | None) -> str:
    """'99.95 % / 100.00 % (of 71 %)': raw / decided (share of pixels decided) label agreement; '–' if none."""
    if not numbers:
        return "–"
    if "error" in numbers:
        return f"failed: {numbers['error']}"
    decided = numbers.get("agreement_decided")
    text = f"{100 * numbers['agreement']:.2f} %"
    if "decided_fraction" in numbers:
        text += (f" / {100 * decided:.2f} %" if decided is not None else " / n/a") + \
            f" (of {100 * numbers['decided_fraction']:.0f} %)"
    return text


def _breakdown(result: BenchResult) -> list[str]:
    """ScSAM's per-stage times, when the run measured them."""
    if not result.breakdown:
        return []
    lines = ["", f"## Where ScSAM's time goes (`scsam-{result.config.size}`, batch 1)", "",
             "| path | stage | median s | share |", "|---|---|---|---|"]
    for row in result.breakdown:
        lines.append(f"| {row['path']} | {row['stage']} | {row['median_s']:.5f} | {row['fraction']:.1%} |")
    return lines


def _ceilings(result: BenchResult) -> list[str]:
    """The dense matmul rates every fraction is taken against."""
    if not result.matmul_tflops:
        return []
    rates = ", ".join(f"{name} {rate * 1e3:.1f} GFLOP/s" for name, rate in result.matmul_tflops.items())
    return ["", f"Dense matmul rates, the best this run measured on this device (the ceilings of every "
                f"fraction): {rates}. Each measurement is in the JSON (`matmul_tflops_start`, and "
                "`matmul_tflops_here` beside each record): where they vary, the machine was shared."]


def write_markdown(result: BenchResult, path: Path) -> None:
    text = markdown_table(result)
    write_file_atomic(path, lambda tmp: tmp.write_text(text), "--markdown")


def write_plot(result: BenchResult, path: Path) -> None:
    """Grouped bars: seconds per slice (log scale) per model, one bar per backend plus the paper's (drawn on a
    `Figure` of its own: no pyplot state, no GUI backend)."""
    cfg = result.config
    series: dict[str, list[float]] = {"paper (RTX 3090, ViT-H)": [PAPER_TABLE5_SECONDS.get(m, float("nan")) for m in cfg.models]}
    for backend in cfg.backend_names:
        values = []
        for family in cfg.models:
            record = _batch1(result, family, backend)
            values.append(record["median_s_per_slice"] if record and record["status"] == "ok" else float("nan"))
        series[backend] = values  # type: ignore[assignment]
    fig = Figure(figsize=(9, 4.5))
    axis = fig.subplots()
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series.items()):
        positions = [m + index * width for m in range(len(cfg.models))]
        axis.bar(positions, values, width, label=label)
    axis.set_xticks([m + 0.4 - width / 2 for m in range(len(cfg.models))], list(cfg.models))
    axis.set_yscale("log")
    axis.set_ylabel("seconds per slice (log)")
    axis.set_title(f"ScSAM Table 5, --size {cfg.size}, {result.machine['device_name']}")
    axis.legend(fontsize=8)
    fig.tight_layout()
    image_format = plot_format(path)
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format=image_format), "--plot")
