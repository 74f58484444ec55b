"""`emseg-rt export`, `emseg-rt build` and `emseg-rt inspect`: thin over emseg_rt.export, emseg_rt.engines and
emseg_rt.package."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from emseg_rt.cli.app import app
from emseg_rt.cli.tables import out_console, print_table
from emseg_rt.errors import EmsegError


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="Registered model name (see `emseg-rt models`)."),
    out: Path | None = typer.Option(None, "--out", help="Package directory to write (must be empty or absent)."),
    bioimageio: Path | None = typer.Option(None, "--bioimageio", help="Write a bioimage.io model package (OUT.zip, "
                                           "model spec 0.5: the full ONNX graph, test tensors, card) instead of --out."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="Checkpoint(s) or official weights names "
                                          "(emseg-rt weights list), loaded in order."),
    precision: str = typer.Option("fp32", "--precision", help="fp32; fp16 (mixed: FP16 compute, FP32 islands); int8 "
                                  "(QDQ matmuls and convolutions, ONNX Runtime); fp32-fused (fused attention, ONNX "
                                  "Runtime); fp8 (E4M3 Q/DQ matmuls for TensorRT for RTX engines, sm89 and newer); "
                                  "int8-wo (int8 matmul weights, float activations: weight-only engines, sm86 and "
                                  "newer)."),
    calibration: Path = typer.Option(None, "--calibration", help="With int8 or fp8: a uint8 volume whose tiles calibrate "
                                     "the quantisation and measure its parity (default: synthetic phantoms)."),
    calibration_tiles: int = typer.Option(None, "--calibration-tiles", help="With int8 or fp8: tiles to calibrate on "
                                          "(default 8)."),
    batch_max: int = typer.Option(8, "--batch-max", help="Largest batch the graphs and engines accept."),
    fp16_head: bool = typer.Option(False, "--fp16-head", help="With fp16, run the head in FP16 too."),
    allow_parity_failure: bool = typer.Option(False, "--allow-parity-failure",
                                              help="Write the package even if parity misses its targets (marked failed)."),
    force: bool = typer.Option(False, "--overwrite", "--force", help="Replace an existing package at --out."),
    aoti: bool = typer.Option(False, "--aoti", help="Also compile full.pt2 with AOTInductor for C/C++ hosts (cpp/)."),
    aoti_device: str = typer.Option("cpu", "--aoti-device", help="Device the --aoti package runs on: cpu or cuda."),
    component: list[str] = typer.Option([], "--component", help="Only these graphs (e.g. full; default: all)."),
) -> None:
    """Export MODEL to a package: full.onnx, one graph per component, manifest.json with measured parity."""
    from emseg_rt.export.parity import parity_summary  # deferred: CLI start-up (torch and ONNX load on use)
    from emseg_rt.export.writer import export_package  # deferred: CLI start-up
    from emseg_rt.io.outputs import check_folder_of  # deferred: CLI start-up
    from emseg_rt.package import load_package  # deferred: CLI start-up
    from emseg_rt.progress import Progress  # deferred: CLI start-up
    from emseg_rt.weights.fetch import resolve_checkpoints  # deferred: CLI start-up

    if (out is None) == (bioimageio is None):
        raise EmsegError("emseg-rt export: pass one of --out DIR (a model package) or --bioimageio OUT.zip")
    if out is not None:
        check_folder_of(out, "--out")  # the folder --out goes into exists and is writable (the rest: export_package)
    checkpoint = resolve_checkpoints(checkpoint, say=_say)  # official weights names → verified files in the cache
    if bioimageio is not None:
        return _export_bioimageio(model, bioimageio, checkpoint, precision, batch_max, force,
                                  aoti or bool(component) or fp16_head or allow_parity_failure)
    with Progress("export", None, unit="steps", say=_say) as progress:  # a bar, or each step and every 10 s a line
        path = export_package(model, out, precision=precision, checkpoints=checkpoint, batch_max=batch_max,
                              allow_parity_failure=allow_parity_failure, overwrite=force, fp16_head=fp16_head,
                              progress=progress.step, components=component or None,
                              aoti_device=aoti_device if aoti else None, calibration=calibration,
                              calibration_tiles=calibration_tiles)
    package = load_package(path)
    typer.echo(f"{path}: {package.name} {package.precision}, parity "
               f"{'passed' if package.parity['passed'] else 'FAILED (' + parity_summary(package.parity) + ')'}")
    for record in package.manifest.get("aoti", {}).values():
        aoti_parity = record["parity"]
        typer.echo(f"{path / record['file']}: AOTInductor ({record['device']}, torch {record['torch']}), parity "
                   f"{'passed' if aoti_parity['passed'] else 'FAILED (' + parity_summary(aoti_parity) + ')'}")


def _export_bioimageio(model: str, out_zip: Path, checkpoint: list[Path], precision: str, batch_max: int,
                       overwrite: bool, directory_only: bool) -> None:
    """`export --bioimageio OUT.zip`: the package cache's full graph as a bioimage.io model package."""
    from emseg_rt.export.bioimageio import export_bioimageio  # deferred: CLI start-up
    from emseg_rt.progress import Progress  # deferred: CLI start-up

    if directory_only:
        raise EmsegError("--bioimageio writes the full graph as exported for the package cache: --aoti, --component, "
                         "--fp16-head and --allow-parity-failure apply to --out only")
    with Progress("export", None, unit="steps", say=_say) as progress:
        path = export_bioimageio(model, out_zip, precision, checkpoint, batch_max, overwrite=overwrite,
                                 progress=progress.step)
    typer.echo(f"{path}: bioimage.io model package ({model}, {precision}); check it with "
               f"`bioimageio test {path}`, run it with `emseg-rt segment VOLUME --model {path}`")


@app.command("build")
def build_command(
    package_dir: Path = typer.Argument(..., help="Package directory written by `emseg-rt export`."),
    target: str = typer.Option("sm86", "--target", help="Comma-separated GPU targets (sm86,sm89,sm120) or 'current'."),
    engine_backend: str = typer.Option("tensorrt-rtx", "--engine-backend", help="tensorrt-rtx or tensorrt."),
    component: list[str] = typer.Option([], "--component", help="Only these components (default: all)."),
    batch_max: int | None = typer.Option(None, "--batch-max", help="Profile maximum batch (default: the package's)."),
) -> None:
    """Build one TensorRT engine per component and target into PACKAGE_DIR/engines/ and record them."""
    from emseg_rt.engines import build_engines  # deferred: CLI start-up (ONNX and TensorRT load on use)
    from emseg_rt.progress import Progress  # deferred: CLI start-up

    with Progress("build", None, unit="engines", say=_say) as progress:  # a bar, or each engine and every 10 s a line
        records = build_engines(package_dir, targets=target, flavour=engine_backend, components=component or None,
                                batch_max=batch_max, progress=progress.step)
    for record in records:
        typer.echo(f"{record.file}: {record.flavour} {record.trt_version}, {record.target}, {record.precision}, "
                   f"{record.bytes / (1 << 20):.1f} MiB, built in {record.build_seconds:.1f} s")


def _parity_numbers(output: str, numbers: dict) -> str:
    """One output's parity numbers: 'logits: rel 5.2e-04' or 'labels: raw 99.95%, decided 100.00% (of 71% px)'."""
    if "rel_error" in numbers:
        return f"{output}: rel {numbers['rel_error']:.2g}"
    if "agreement" not in numbers:
        return f"{output}: shape {numbers.get('shape')} ≠ {numbers.get('expected_shape')}"
    text = f"{output}: raw {100 * numbers['agreement']:.2f}%"
    if "decided_fraction" in numbers:
        decided = numbers.get("agreement_decided")
        text += (f", decided {100 * decided:.2f}%" if decided is not None else ", decided n/a") + \
            f" (of {100 * numbers['decided_fraction']:.0f}% px)"
    return text


@app.command("inspect")
def inspect_command(
    package_dir: Path = typer.Argument(..., help="Package directory."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of every file (the graphs are "
                                   "still read whole and checked against the manifest)."),
) -> None:
    """Print a readable summary of a model package, after checking it as every command does (`load_package`): every
    file's sha256 (unless --no-verify), and every graph against what the manifest says of it."""
    from emseg_rt.package import load_package  # deferred: CLI start-up (ONNX loads on use)

    package = load_package(package_dir, verify=not no_verify)
    manifest = package.manifest
    console = out_console()  # plain and never cut in a log (`cli/tables.py`)
    console.print(f"[bold]{package.name}[/bold] ({package.family}) — {package.precision}, tile {package.tile}, "
                  f"batch 1..{package.batch_max}, opset {manifest.get('opset')}")
    console.print(f"classes: {', '.join(f'{i + 1}={c}' for i, c in enumerate(package.classes))} (0=background)")
    console.print(f"input: {package.input.name} {package.input.dtype} {list(package.input.shape)}; "
                  "normalisation inside the graph")
    table = Table(title="components")
    for column in ("name", "file", "MiB", "inputs", "outputs", "parity"):
        table.add_column(column)
    parity = package.parity.get("components", {})
    for name, spec in package.components.items():
        size = sum((package.root / f).stat().st_size for f in (spec.file, *spec.external_data)) / (1 << 20)
        result = parity.get(name, {})
        numbers = [_parity_numbers(out, n) for out, n in result.get("outputs", {}).items()]
        table.add_row(
            name, spec.file, f"{size:.1f}",
            "\n".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in spec.inputs),
            "\n".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in spec.outputs),
            ("ok " if result.get("passed") else "FAIL ") + ", ".join(numbers),
        )
    print_table(table, console)
    p = package.parity
    targets = p.get("targets", {})
    console.print(f"parity: {'passed' if p.get('passed') else 'FAILED'} (targets rel ≤ {targets.get('rel_error')}, "
                  f"labels by {targets.get('label_metric', 'agreement')} ≥ {targets.get('label_agreement')}; "
                  f"batch {p.get('batch')}, seed {p.get('seed')})"
                  + ("; written with --allow-parity-failure" if p.get("allowed_failure") else ""))
    console.print("  labels: raw = all pixels; decided = pixels whose fp32 decision margin exceeds the measured "
                  "logit error (docs/export.md)")
    if package.engines:
        engines = Table(title="engines")
        for column in ("component", "target", "flavour", "version", "MiB", "build s", "file"):
            engines.add_column(column)
        for name, per_target in package.engines.items():
            for target, record in per_target.items():
                engines.add_row(name, target, record.flavour, record.trt_version, f"{record.bytes / (1 << 20):.1f}",
                                f"{record.build_seconds:.1f}", record.file)
        print_table(engines, console)
    else:
        console.print("engines: none (run `emseg-rt build`)")
    tools = manifest.get("toolchain", {})
    console.print("toolchain: " + ", ".join(f"{k} {v}" for k, v in tools.items() if v))
    count = len(manifest["files"])
    console.print(f"files: {count}, " + ("sha256 NOT checked (--no-verify); " if no_verify else
                                         "every sha256 checked; ") + "every graph read whole and its inputs and "
                  "outputs checked against the manifest")
