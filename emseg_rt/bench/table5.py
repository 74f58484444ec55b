"""Run ScSAM's Table 5 (per-image inference time) over backends, batch sizes and model sizes."""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emseg_rt.bench.agreement import Reference, agreement_with, reference_output
from emseg_rt.bench.breakdown import scsam_stage_breakdown
from emseg_rt.bench.machine import machine_record
from emseg_rt.bench.runners import BACKENDS, BenchTarget, default_backends, load_target, prepare
from emseg_rt.bench.timing import (
    measure_latency,
    peak_host_memory_bytes,
    peak_matmul_rates,
    reset_peak_host_memory,
)
from emseg_rt.constants import TABLE5_ROWS
from emseg_rt.errors import EmsegError
from emseg_rt.models import list_models
from emseg_rt.models.checkpoint import read_state_dict
from emseg_rt.models.info import model_info
from emseg_rt.progress import Progress, format_duration

Say = Callable[[str], None]

# ScSAM Table 5: seconds per 1024² image on an RTX 3090 with PyTorch 1.11 (research code, eager fp32).
PAPER_TABLE5_SECONDS = {
    "vanilla-sam": 0.321,
    "vanilla-sam2": 0.273,
    "surgicalsam": 0.374,
    "mae-star": 0.144,
    "sam-star": 0.375,
    "scsam": 0.457,
}
PAPER_ROWS = TABLE5_ROWS
SIZES = ("vit-h", "vit-b", "tiny")
# SAM2 has no ViT sizes: --size vit-h / vit-b run its SAM2.1 Hiera-L / Hiera-B+ (the paper does not name the
# SAM2 size behind its 0.273 s; these are the SAM2.1 models nearest SAM ViT-H / ViT-B in role).
# SAMDA (not a Table-5 row; `--models samda`) has no ViT-H variant: vit-h runs its ViT-B, the paper's size.
FAMILY_SIZES = {"vanilla-sam2": {"vit-h": "hiera-l", "vit-b": "hiera-b+"}, "samda": {"vit-h": "vit-b"}}


def registry_name(family: str, size: str) -> str:
    """The registry model a bench row runs: 'scsam', 'vit-h' → 'scsam-vit-h'; 'vanilla-sam2', 'vit-h' →
    'vanilla-sam2-hiera-l' (`FAMILY_SIZES`)."""
    return f"{family}-{FAMILY_SIZES.get(family, {}).get(size, size)}"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. `models` are family names (the paper's rows); `size` picks the variant."""

    models: tuple[str, ...] = PAPER_ROWS
    size: str = "vit-h"
    backends: tuple[str, ...] = ()  # empty: default_backends(device)
    batches: tuple[int, ...] = (1,)
    warmup: int = 3
    iters: int = 20
    device: str = "cuda"
    breakdown: bool = True
    agreement: bool = True  # each record's label agreement with torch-eager-fp32 on phantom tiles (bench/agreement.py)
    checkpoints: tuple[str, ...] = ()  # weights for the one model (`load_backend`'s checkpoints); () its own

    @property
    def backend_names(self) -> tuple[str, ...]:
        return self.backends or default_backends(self.device)

    def validate(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise EmsegError(f"--device {self.device!r}: choose cpu, cuda or auto")
        if self.size not in SIZES:
            raise EmsegError(f"--size {self.size!r}: choose one of {', '.join(SIZES)}")
        unknown = [b for b in self.backend_names if b not in BACKENDS]
        if unknown:
            raise EmsegError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        names = set(list_models())
        missing = [m for m in self.models if registry_name(m, self.size) not in names]
        if missing:
            raise EmsegError(f"--models: no {', '.join(registry_name(m, self.size) for m in missing)} in the registry")
        if not self.batches or min(self.batches) < 1:
            raise EmsegError("--batch: give one or more batch sizes >= 1")
        if self.iters < 1 or self.warmup < 0:
            raise EmsegError("--iters must be >= 1 and --warmup >= 0")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EmsegError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
        self._validate_checkpoints()

    def _validate_checkpoints(self) -> None:
        if self.checkpoints and len(self.models) != 1:
            raise EmsegError(f"--weights apply to one model; --models names {len(self.models)} "
                             f"({', '.join(self.models)}): bench them one at a time")
        missing = [str(path) for path in self.checkpoints if not Path(path).is_file()]
        if missing:
            raise EmsegError(f"--weights {missing[0]}: no such file")
        for path in self.checkpoints:  # a corrupt or unsafe file is one line now, not a failed record per backend
            read_state_dict(path)


@dataclass
class BenchResult:
    """Everything one run measured: machine, records (one per model × backend × batch), breakdown."""

    config: BenchConfig
    machine: dict[str, object]
    matmul_tflops: dict[str, float]  # dense matmul rate by precision name: the best this run measured
    matmul_tflops_start: dict[str, float] = field(default_factory=dict)  # the run's first measurement
    records: list[dict[str, object]] = field(default_factory=list)
    breakdown: list[dict[str, object]] = field(default_factory=list)
    references: dict[str, Reference] = field(default_factory=dict)  # per model name: fp32 labels (not in the JSON)

    def reference(self, model_name: str) -> Reference:
        """The fp32 reference of `model_name` on the agreement tiles, computed on first use."""
        if model_name not in self.references:
            self.references[model_name] = reference_output(model_name, self.config.device, self.config.checkpoints)
        return self.references[model_name]

    def to_dict(self) -> dict[str, object]:
        cfg = self.config
        return {
            "benchmark": "scsam-table5",
            "config": {"models": list(cfg.models), "size": cfg.size, "backends": list(cfg.backend_names),
                       "batches": list(cfg.batches), "warmup": cfg.warmup, "iters": cfg.iters, "device": cfg.device,
                       "agreement": cfg.agreement, "checkpoints": [weights_record(p) for p in cfg.checkpoints]},
            "machine": self.machine,
            "matmul_tflops": self.matmul_tflops,
            "matmul_tflops_start": self.matmul_tflops_start,
            "paper": {"source": "ScSAM Table 5, RTX 3090, PyTorch 1.11", "seconds_per_image": PAPER_TABLE5_SECONDS},
            "records": self.records,
            "scsam_breakdown": self.breakdown,
        }


def weights_record(path: str) -> dict[str, str]:
    """A checkpoint as the JSON names it: its file name and sha256 (the path is this machine's)."""
    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _peak_device_bytes(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def _reset_peaks(device: str) -> None:
    gc.collect()
    reset_peak_host_memory()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _agreement(backend: object, reference: Callable[[], Reference] | None) -> dict[str, object] | None:
    """The record's label agreement with fp32 (bench/agreement.py); None when not asked for; {'error': line}
    when it could not be measured (the timing stands)."""
    if reference is None:
        return None
    try:
        return agreement_with(backend, reference())  # type: ignore[arg-type]
    except (EmsegError, RuntimeError, MemoryError, ValueError) as exc:
        return {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}


def _measure(target: BenchTarget, family: str, model_name: str, batch: int, cfg: BenchConfig,
             gflops: float, reference: Callable[[], Reference] | None = None) -> dict[str, object]:
    record: dict[str, object] = {"model": family, "model_name": model_name, "backend": target.name, "batch": batch,
                                 "device": cfg.device, "gflops_per_slice": gflops,
                                 "paper_s": PAPER_TABLE5_SECONDS.get(family)}
    # Loading (and any export or engine build) stays out of the timings and the memory peaks.
    backend = load_target(target, model_name, cfg.device, batch_max=max(8, max(cfg.batches)),
                          checkpoints=cfg.checkpoints)
    try:
        prepared = prepare(backend, model_name, batch)
        _reset_peaks(cfg.device)
        stats = measure_latency(prepared.run, cfg.device, cfg.warmup, cfg.iters)
        peak_device = _peak_device_bytes(cfg.device)
        agreement = _agreement(backend, reference)
    finally:
        backend.close()
    # The ceilings again, right after the timed calls: on a shared machine the matmul rate drifts (measured
    # 112 to 315 GFLOP/s fp32 within one run here); `_fractions` takes the best of all of them.
    rates_here = peak_matmul_rates(cfg.device)
    per_slice = stats.median_s / batch
    achieved = gflops / per_slice / 1e3
    record.update({
        "status": "ok",
        "precision": backend.spec.precision,
        "backend_identity": backend.spec.identity,
        "details": prepared.details,
        "median_s_per_slice": per_slice,
        "p90_s_per_slice": stats.p90_s / batch,
        "median_s_per_batch": stats.median_s,
        "throughput_slices_per_s": batch / stats.median_s,
        "iters": stats.iters,
        "samples_s": list(stats.samples_s),
        "peak_host_mb": (peak_host_memory_bytes() or 0) / 2**20,
        "peak_device_mb": None if peak_device is None else peak_device / 2**20,
        "achieved_tflops": achieved,
        "matmul_tflops_here": rates_here,
        "label_agreement_vs_fp32": agreement,
    })
    return record


def _fractions(result: BenchResult) -> None:
    """Each record's fraction of the dense matmul rate, per precision, against the best rate this run measured
    (at its start and beside every record): the most the device showed it can do. One ceiling for the whole
    run, so fractions compare as the times do, and contention lowers a fraction rather than raising it.
    `matmul_tflops` becomes that best; `matmul_tflops_start` keeps the first measurement."""
    best = dict(result.matmul_tflops)
    for record in result.records:
        for name, rate in record.get("matmul_tflops_here", {}).items():
            best[name] = max(best.get(name, 0.0), rate)
    result.matmul_tflops_start, result.matmul_tflops = dict(result.matmul_tflops), best
    for record in result.records:
        if record["status"] != "ok":
            continue
        achieved = record["achieved_tflops"]
        record["fraction_of_matmul_rates"] = {name: achieved / rate for name, rate in best.items()}
        own = "fp32" if record["precision"] == "fp32-fused" else record["precision"]  # fused: fp32 matmuls
        record["fraction_of_matmul_peak"] = record["fraction_of_matmul_rates"].get(own)


def _speedups(records: list[dict[str, object]]) -> None:
    eager = {(r["model"], r["batch"]): r["median_s_per_slice"] for r in records
             if r["backend"] == "torch-eager-fp32" and r["status"] == "ok"}
    for record in records:
        if record["status"] != "ok":
            continue
        base = eager.get((record["model"], record["batch"]))
        record["speedup_vs_eager"] = None if base is None else base / record["median_s_per_slice"]
        paper = record.get("paper_s")
        record["speedup_vs_paper"] = None if paper is None else paper / record["median_s_per_slice"]


def run_bench(cfg: BenchConfig, say: Say = lambda message: None, progress: Progress | None = None) -> BenchResult:
    """Measure every model × backend × batch of `cfg`; failures are recorded, not raised.

    say:      one-line notes (the matmul rates measured, sizes mapped, backends unavailable).
    progress: the caller's open reporter (`emseg_rt.progress.Progress`, e.g. `Progress("bench", None,
              unit="measurements", say=say)`): its total is set to the number of measurements and it advances
              by one after each, with 'model · backend · batch' as its status. None: no progress shown.
    """
    cfg.validate()
    progress = progress or Progress("bench", None, enabled=False)
    peak_rates = peak_matmul_rates(cfg.device)
    say("measured matmul rates: " + ", ".join(f"{k} {v * 1e3:.1f} GFLOP/s" for k, v in peak_rates.items()))
    estimate = bench_estimate(cfg, peak_rates)
    if estimate is not None:
        say(estimate)
    result = BenchResult(cfg, machine_record(cfg.device), peak_rates)
    progress.update(progress.done, total=len(cfg.backend_names) * len(cfg.models) * len(cfg.batches))
    for name in cfg.backend_names:
        _bench_backend(result, BenchTarget.parse(name), say, progress)
    _speedups(result.records)
    _fractions(result)
    if cfg.breakdown and "scsam" in cfg.models:
        say("scsam per-stage breakdown")
        progress.update(progress.done, status="scsam per-stage breakdown")
        fast_backend = next((b for b in cfg.backend_names if b.startswith("torch-") and "eager" not in b), None)
        result.breakdown = scsam_stage_breakdown(f"scsam-{cfg.size}", cfg.device, cfg.warmup, cfg.iters,
                                                 fast_backend=fast_backend)
    return result


ESTIMATE_MIN_SECONDS = 60.0  # no up-front estimate for a run shorter than this at the matmul rates
EFFICIENCY_RANGE = "20–75 %"  # of the matmul rate, what the Table 5 models reached (README, CPU vit-b table)


def bench_seconds_at_matmul_rates(cfg: BenchConfig, peak_rates: dict[str, float]) -> tuple[int, float]:
    """(measurements, seconds) the model calls of `cfg` take at the measured matmul rates (TFLOP/s by precision):
    warm-up and timed calls of every available model × backend × batch, and the ScSAM breakdown (eager and fast
    paths). A floor: real models reach a fraction of the rate, and loading, exports and engine builds add to it."""
    gflops = {family: model_info(registry_name(family, cfg.size)).gflops_per_slice for family in cfg.models}
    calls = cfg.warmup + cfg.iters
    measurements, seconds = 0, 0.0
    for name in cfg.backend_names:
        target = BenchTarget.parse(name)
        if target.unavailable_reason(cfg.device) is not None:
            continue
        rate = peak_rates.get(target.precision, peak_rates["fp32"]) * 1e3  # GFLOP/s
        for family in cfg.models:
            measurements += len(cfg.batches)
            seconds += sum(gflops[family] * batch * calls for batch in cfg.batches) / rate
    if cfg.breakdown and "scsam" in cfg.models:
        seconds += 2 * gflops["scsam"] * calls / (peak_rates["fp32"] * 1e3)
    return measurements, seconds


def bench_estimate(cfg: BenchConfig, peak_rates: dict[str, float]) -> str | None:
    """The line `bench` says before its first measurement when the run will take a minute or more, e.g. 'bench:
    18 measurements of 23 calls each at vit-h: at least 17h20m at the matmul rates measured above (the models
    reach 20–75 % of them, so expect up to 5× that); --size tiny, fewer --models or --iters 3 for a shorter run'."""
    measurements, seconds = bench_seconds_at_matmul_rates(cfg, peak_rates)
    if seconds < ESTIMATE_MIN_SECONDS:
        return None
    return (f"bench: {measurements} measurements of {cfg.warmup + cfg.iters} calls each at {cfg.size}: at least "
            f"{format_duration(seconds)} at the matmul rates measured above (the models reach {EFFICIENCY_RANGE} of "
            "them, so expect up to 5× that); --size tiny, fewer --models or --iters 3 for a shorter run")


def _bench_backend(result: BenchResult, target: BenchTarget, say: Say, progress: Progress) -> None:
    """Every model × batch of `result.config` on one backend, appended to `result.records` (a record with
    status 'unavailable' or 'failed' where the backend cannot run here or a measurement raised)."""
    cfg = result.config
    reason = target.unavailable_reason(cfg.device)
    for family in cfg.models:
        model_name = registry_name(family, cfg.size)
        if model_name != f"{family}-{cfg.size}":
            say(f"{family}: --size {cfg.size} runs {model_name}")
        gflops = model_info(model_name).gflops_per_slice
        for batch in cfg.batches:
            base = {"model": family, "model_name": model_name, "backend": target.name, "batch": batch,
                    "device": cfg.device, "paper_s": PAPER_TABLE5_SECONDS.get(family)}
            if reason is not None:
                result.records.append({**base, "status": "unavailable", "reason": reason})
            else:
                progress.update(progress.done, status=f"{model_name} · {target.name} · batch {batch}")
                reference = (lambda name=model_name: result.reference(name)) if cfg.agreement else None
                try:
                    result.records.append(_measure(target, family, model_name, batch, cfg, gflops, reference))
                except (EmsegError, RuntimeError, MemoryError) as exc:
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    result.records.append({**base, "status": "failed", "reason": message[:300]})
            progress.advance(1)
    if reason is not None:
        say(f"{target.name}: unavailable ({reason})")
