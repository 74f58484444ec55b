"""Export a model package and build TensorRT-for-RTX engines; record times, sizes and parity.

    python benchmarks/export_build.py --model scsam-vit-b --precision fp16 --targets sm86,sm89

Writes benchmarks/results/export_build_<model>_<precision>.json and .md (never edit them by hand).
Times are wall-clock seconds on the machine named in the result (engine builds need no GPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    except Exception:
        return "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scsam-vit-b")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    parser.add_argument("--targets", default="sm86,sm89")
    parser.add_argument("--batch-max", type=int, default=4)
    parser.add_argument("--work-dir", default=None, help="where the package is written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the package after the run")
    args = parser.parse_args()

    from emseg_rt.engines import build_engines
    from emseg_rt.export import export_package
    from emseg_rt.export.writer import toolchain_versions
    from emseg_rt.package import load_package

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="emseg-bench-"))
    package_dir = work / f"{args.model}-{args.precision}"
    started = time.perf_counter()
    export_package(args.model, package_dir, precision=args.precision, batch_max=args.batch_max,
                   allow_parity_failure=True, overwrite=True, progress=lambda m: print("  " + m, flush=True))
    export_seconds = time.perf_counter() - started
    build_started = time.perf_counter()
    build_engines(package_dir, targets=args.targets, flavour="tensorrt-rtx",
                  progress=lambda m: print("  " + m, flush=True))
    build_seconds = time.perf_counter() - build_started
    package = load_package(package_dir)
    manifest = package.manifest
    files = {rel: (package_dir / rel).stat().st_size for rel in manifest["files"]}
    result = {
        "benchmark": "export_build",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu_name(), "platform": platform.platform()},
        "model": args.model,
        "precision": args.precision,
        "fp32_modules": manifest.get("fp32_modules", []),
        "batch_max": args.batch_max,
        "targets": args.targets.split(","),
        "versions": toolchain_versions(),
        "export_seconds_total": round(export_seconds, 2),
        "export_seconds_per_component": manifest["export_seconds_per_component"],
        "parity": manifest["parity"],
        "build_seconds_total": round(build_seconds, 2),
        "engines": {c: {t: {"build_seconds": r.build_seconds, "bytes": r.bytes} for t, r in per.items()}
                    for c, per in package.engines.items()},
        "file_bytes": files,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"export_build_{args.model}_{args.precision}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(stem.with_suffix(".md").read_text())
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict) -> str:
    mib = 1 << 20
    m = result["machine"]
    lines = [
        f"# export + build: {result['model']} ({result['precision']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}. Date {result['date']}. "
        f"torch {result['versions']['torch']}, onnx {result['versions']['onnx']}, "
        f"onnxruntime {result['versions']['onnxruntime']}, tensorrt-rtx {result['versions']['tensorrt_rtx']}.",
        "",
        f"FP32 modules in the fp16 graph: {', '.join(result['fp32_modules']) or 'none'} "
        "(plus LayerNorm/softmax/reductions everywhere).",
        "",
        f"Export (all graphs + parity): {result['export_seconds_total']:.1f} s; "
        f"engine builds ({', '.join(result['targets'])}): {result['build_seconds_total']:.1f} s.",
        "",
        "| component | export s | ONNX MiB | " + " | ".join(f"{t} build s | {t} MiB" for t in result["targets"]) + " |",
        "|---|---:|---:|" + "---:|---:|" * len(result["targets"]),
    ]
    for comp, secs in result["export_seconds_per_component"].items():
        onnx_bytes = sum(b for f, b in result["file_bytes"].items() if f.startswith(comp + ".onnx"))
        cells = []
        for t in result["targets"]:
            e = result["engines"].get(comp, {}).get(t)
            cells += [f"{e['build_seconds']:.1f}", f"{e['bytes'] / mib:.1f}"] if e else ["–", "–"]
        lines.append(f"| {comp} | {secs:.1f} | {onnx_bytes / mib:.1f} | " + " | ".join(cells) + " |")
    p = result["parity"]
    lines += [
        "",
        f"Parity (ONNX Runtime CPU vs PyTorch fp32, batch {p['batch']}, seed {p['seed']}; targets rel ≤ "
        f"{p['targets']['rel_error']}, label agreement ≥ {p['targets']['label_agreement']}): "
        f"**{'passed' if p['passed'] else 'FAILED'}**",
        "",
        "| component | output | max abs | rel error | label agreement |",
        "|---|---|---:|---:|---:|",
    ]
    for comp, r in p["components"].items():
        for out, n in r["outputs"].items():
            lines.append(f"| {comp} | {out} | {n.get('max_abs', float('nan')):.3g} | "
                         f"{n.get('rel_error', float('nan')):.3g} | "
                         f"{(str(round(100 * n['agreement'], 3)) + ' %') if 'agreement' in n else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
