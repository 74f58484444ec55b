"""Latency measurement: warm-up, then many timed calls; device events on CUDA, a host clock otherwise."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatencyStats:
    """Seconds per call: median and 90th percentile over `iters` calls after `warmup` calls."""

    median_s: float
    p90_s: float
    iters: int
    samples_s: tuple[float, ...]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list, q in [0, 100]."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_latency(fn: Callable[[], object], device: str, warmup: int, iters: int) -> LatencyStats:
    """Time `fn` (one batch) `iters` times after `warmup` calls.

    On CUDA each call is bracketed by CUDA events (the asynchronous device work is timed, not the
    launch); elsewhere by `time.perf_counter`.
    """
    if iters < 1:
        raise ValueError("iters must be >= 1")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
    for _ in range(iters):
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
        else:
            began = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - began)
    return LatencyStats(statistics.median(samples), percentile(samples, 90), iters, tuple(samples))


def reset_peak_host_memory() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux: /proc/self/clear_refs '5')."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_host_memory_bytes() -> int | None:
    """Peak resident set size of this process since the last reset (VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_matmul_rates(device: str) -> dict[str, float]:
    """Measured dense matmul rates (TFLOP/s) by precision name, the ceilings each record's 'fraction of
    matmul peak' is taken against, each from its fastest call (a ceiling is the best the device did, and on a
    shared machine the median is noise): fp32, fp16 and bf16 on CUDA (8192², 20 calls); fp32, bf16 and int8 on
    a CPU (2048², 3 calls after 1 warm-up, at this process's torch thread count; bf16 is emulated where the CPU
    has no bf16 instructions, and then slower than fp32; int8 is `torch._int_mm`, oneDNN's int8 GEMM with VNNI
    where the CPU has it, in tera-ops per second, absent where this torch has no CPU int8 GEMM)."""
    if device.startswith("cuda"):
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        return {name: matmul_tflops(device, dtype, best=True) for name, dtype in dtypes.items()}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rates = {name: matmul_tflops(device, dtype, size=2048, iters=3, warmup=1, best=True)
             for name, dtype in dtypes.items()}
    int8 = int8_matmul_tops()
    return {**rates, "int8": int8} if int8 is not None else rates


def int8_matmul_tops(size: int = 2048, iters: int = 3, warmup: int = 1) -> float | None:
    """Measured int8 × int8 → int32 matmul rate on the CPU (tera-ops/s, fastest call), or None where this torch
    has no CPU `torch._int_mm`."""
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    try:
        torch._int_mm(a, b)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    stats = measure_latency(lambda: torch._int_mm(a, b), "cpu", warmup=warmup, iters=iters)
    return 2 * size**3 / min(stats.samples_s) / 1e12


def matmul_tflops(device: str, dtype: torch.dtype, size: int = 8192, iters: int = 20, best: bool = False,
                  warmup: int = 3) -> float:
    """Measured dense matmul rate (TFLOP/s) of this device in `dtype`, from the median call (`best`: the
    fastest call)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    stats = measure_latency(lambda: torch.matmul(a, b), device, warmup=warmup, iters=iters)
    seconds = min(stats.samples_s) if best else stats.median_s
    return 2 * size**3 / seconds / 1e12
