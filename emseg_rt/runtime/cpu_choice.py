"""`--backend auto --precision auto` on a CPU: the fastest path that keeps the labels (issue 30.1).

On a CPU that computes bf16 natively (AVX-512 BF16 or AMX: `devices.cpu_has_bf16`) two paths can be fastest:
ONNX Runtime fp32 (the exported package's graph) and PyTorch with bf16 autocast. Which one wins depends on the
model and the batch (measured on an AMD EPYC with AVX-512 BF16: the 128² default model at batch 1 runs 2.7×
faster in ONNX Runtime, at batch 8 1.5× faster in bf16; ViT-B at 1024² 1.2× faster in bf16), and bf16 may change
labels. So the choice is measured, once per model, weights, CPU, thread count, batch and library versions, and
kept as data in the cache (`cache_root()/cpu-choice/*.json`, every figure in it):

- each candidate runs the same phantom tiles (`runtime.agreement`: up to 64 tiles, about 2²⁰ pixels) in calls
  of the run's batch: one warm-up, then `REPEATS` timed passes, the candidates interleaved so that a shared
  machine's load falls on both; the per-tile time is the fastest pass;
- bf16 is kept only when at least `AGREEMENT_BAR` of its labels equal ONNX Runtime fp32's (raw agreement: every
  pixel counts; with random weights the logits are nearly tied and bf16 fails this, so fp32 runs) and it is
  at least `SPEED_MARGIN` faster (so that a close call, decided by noise, does not flip between machines).

Without native bf16 there is nothing to measure: ONNX Runtime fp32, as `auto` ran before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from emseg_rt import __version__
from emseg_rt.export.cache import cache_root
from emseg_rt.export.parity import label_threshold
from emseg_rt.runtime.agreement import AGREEMENT_SEED, Reference, agreement_of, agreement_tiles, run_in_batches
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.devices import cpu_flags, cpu_model

CHOICE_DIR = "cpu-choice"
AGREEMENT_BAR = 0.995  # the share of labels that must equal fp32's (issue 30.1)
SPEED_MARGIN = 1.1  # bf16 must be this much faster than fp32 to be chosen
REPEATS = 2
PROBE_PIXELS = 2**20
FP32, BF16 = ("onnxruntime", "fp32"), ("torch", "bf16")
Route = tuple[str, str]  # (backend, precision)


@dataclass(frozen=True)
class Candidate:
    """One measured path: per-tile seconds (fastest pass) and label agreement with fp32 (None for fp32 itself)."""

    backend: str
    precision: str
    seconds_per_tile: float
    agreement: float | None = None
    agreement_decided: float | None = None


def choice_key(model_id: str, batch: int) -> dict[str, object]:
    """Everything a measured choice depends on; a change in any of it measures again."""
    versions = {}
    for name in ("torch", "onnxruntime"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"model": model_id, "cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
            "batch": batch, "emseg_rt": __version__, **versions}


def choose(candidates: list[Candidate]) -> Candidate:
    """The fp32 candidate (first), unless bf16 keeps `AGREEMENT_BAR` of its labels and is `SPEED_MARGIN` faster."""
    fp32 = candidates[0]
    best = fp32
    for other in candidates[1:]:
        keeps = other.agreement is not None and other.agreement >= AGREEMENT_BAR
        if keeps and other.seconds_per_tile * SPEED_MARGIN <= best.seconds_per_tile:
            best = other
    return best


def measure(model: torch.nn.Module, batch: int, loaded: Mapping[Route, Backend]) -> list[Candidate]:
    """Time each loaded backend (fp32 first: the reference) on the probe tiles; their label agreement with fp32.

    model: the torch pipeline (its tile, prompts and class merge threshold); batch: tiles per call, as the run."""
    cfg = model.config
    count = int(np.clip(PROBE_PIXELS // cfg.tile**2, 1, 64))
    tiles = agreement_tiles(cfg.tile, count)
    example = model.example_inputs(batch=count, seed=AGREEMENT_SEED)
    prompts = {name: example[name].numpy() for name in model.prompt_names}
    times: dict[Route, list[float]] = {path: [] for path in loaded}
    outputs: dict[Route, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        for backend in loaded.values():  # warm-up: first-call allocations, oneDNN kernel selection
            run_in_batches(backend, tiles[:batch], {k: v[:batch] for k, v in prompts.items()}, batch)
        for _ in range(REPEATS):
            for path, backend in loaded.items():
                start = time.perf_counter()
                outputs[path] = run_in_batches(backend, tiles, prompts, batch)
                times[path].append((time.perf_counter() - start) / count)
    fp32 = outputs[next(iter(loaded))]
    reference = Reference(tiles, prompts, fp32["labels"], fp32["logits"], label_threshold(model))
    found = []
    for path in loaded:
        numbers = agreement_of(outputs[path], reference) if path != FP32 else {}
        found.append(Candidate(*path, min(times[path]), numbers.get("agreement"), numbers.get("agreement_decided")))
    return found


def fastest_cpu_path(model: torch.nn.Module, model_id: str, batch: int,
                     loaders: Mapping[Route, Callable[[], Backend]]) -> tuple[Backend, str]:
    """The loaded backend `choose` picks among `loaders` (fp32 first; each loads one candidate, and the fp32 one must
    run before any that changes `model` in place, as the torch bf16 backend does), and why, in a few words.

    The choice is read from the cache when this model, CPU, thread count, batch and library versions were measured
    before; else measured (`measure`) and written there (a cache that cannot be written only costs a measurement
    next time)."""
    key = choice_key(model_id, batch)
    record_path = _record_path(model.config.name, key)
    record = _read(record_path, key)
    if record is not None:
        chosen = (record["chosen"]["backend"], record["chosen"]["precision"])
        return loaders[chosen](), _why(record, cached=True)
    loaded: dict[Route, Backend] = {}
    try:
        for path, load in loaders.items():
            loaded[path] = load()
        candidates = measure(model, batch, loaded)
    except BaseException:
        for backend in loaded.values():
            backend.close()
        raise
    best = choose(candidates)
    record = {"key": key, "candidates": [asdict(c) for c in candidates], "chosen": asdict(best),
              "agreement_bar": AGREEMENT_BAR, "speed_margin": SPEED_MARGIN,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write(record_path, record)
    for path, backend in loaded.items():
        if path != (best.backend, best.precision):
            backend.close()
    return loaded[(best.backend, best.precision)], _why(record, cached=False)


def _why(record: Mapping, cached: bool) -> str:
    """'fastest CPU path for this model here: torch bf16 1.31x onnxruntime fp32, 99.96 % of labels as fp32 ...'"""
    fp32, *others = record["candidates"]
    parts = []
    for other in others:
        speed = fp32["seconds_per_tile"] / other["seconds_per_tile"]
        agreement = other["agreement"]
        shown = "n/a" if agreement is None else f"{100 * agreement:.2f} %"
        parts.append(f"{other['backend']} {other['precision']} {speed:.2f}x the speed of {fp32['backend']} "
                     f"{fp32['precision']}, {shown} of labels as fp32")
    rule = f"kept at >= {100 * AGREEMENT_BAR:.1f} % and >= {SPEED_MARGIN:.1f}x"
    when = f"measured {record['measured']}, cached" if cached else "measured now, cached"
    return f"the fastest CPU path that keeps the labels ({'; '.join(parts)}; {rule}; {when})"


def _record_path(name: str, key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / CHOICE_DIR / f"{name}-{digest}.json"


def _read(path: Path, key: Mapping) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("key") == json.loads(json.dumps(key)) and "chosen" in record
    return record if ok else None


def _write(path: Path, record: Mapping) -> None:
    """Written to a temporary sibling and renamed into place (a reader never sees half a record)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(record, out, indent=2)
        os.replace(staging, path)
    except OSError:
        Path(staging).unlink(missing_ok=True)
