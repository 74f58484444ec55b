"""Build one TensorRT engine per package component and GPU target, and record them in the manifest.

TensorRT for RTX (`tensorrt_rtx`) builds ahead of time without a GPU for the compute capabilities it
knows (`config.set_compute_capability`); it is strongly typed, so the engine's precision is the ONNX
graph's (an fp16 package gives fp16 engines). Standard TensorRT (`tensorrt`) builds only for the GPU it
runs on (`--target current`). Every engine gets one optimisation profile: batch 1..batch_max (optimum at
batch_max), all other dimensions static as in the graph.

Nothing is written outside the package directory: engines go to `<package>/engines/<component>.<target>.engine`
(component and target are validated names, `load_package` refuses a package with a symlink leading out,
and every path is checked to resolve inside the package before it is written), and the manifest and its
hash are rewritten in place. The graph TensorRT parses, and any external data it reads, is what
`load_package` checked: inside the package, listed and hashed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emseg_rt.engines.select import current_target, gpu_target
from emseg_rt.engines.trt import FLAVOURS, RTX_TARGETS, flavour_version, import_flavour
from emseg_rt.checks import split_items
from emseg_rt.errors import EmsegError
from emseg_rt.package import (
    ORT_ONLY_PRECISIONS,
    TARGET_NAME,
    ComponentSpec,
    EngineRecord,
    load_package,
    package_from_manifest,
    package_lock,
    sha256_file,
    write_manifest,
)

__all__ = ["FLAVOURS", "QUANTISED_MIN_TARGET", "RTX_TARGETS", "build_engine", "build_engines", "parse_targets"]

ENGINE_DIR = "engines"
# the oldest GPU each explicitly quantised package builds for: FP8 tensor cores from Ada (sm89; TensorRT refuses
# fp8 graphs for older targets), INT8 weight-only GEMMs from Ampere RTX 30 (sm86)
QUANTISED_MIN_TARGET = {"fp8": 89, "int8-wo": 86}


def target_items(text: str | Sequence[str]) -> list[str]:
    """The targets as written ('sm86, sm89' or ['sm86']), lower-cased; none, or an empty entry, is refused."""
    items = split_items(text, "--target", "sm86,sm89") if isinstance(text, str) else [str(t).strip() for t in text]
    if not items or not all(items):
        raise EmsegError(f"--target {text!r}: name at least one target and no empty one, e.g. sm86,sm89 or current")
    return [item.lower() for item in items]


def parse_targets(text: str | Sequence[str], flavour: str = "tensorrt-rtx") -> list[str]:
    """'sm86,sm89' / ['sm86'] / 'current' → validated target names for `flavour`."""
    items = target_items(text)
    targets = []
    for item in items:
        target = current_target() if item == "current" else item
        if flavour == "tensorrt-rtx" and target not in RTX_TARGETS:
            hint = " (TensorRT for RTX has no Hopper target; use --engine-backend tensorrt on that GPU)" if target == "sm90" else ""
            raise EmsegError(f"--target {item}: TensorRT for RTX builds for {', '.join(RTX_TARGETS)}{hint}")
        if flavour == "tensorrt" and item != "current" and target != gpu_target():
            raise EmsegError(f"--target {item}: standard TensorRT builds only for the GPU it runs on; use --target current")
        if not TARGET_NAME.fullmatch(target):  # engine file names are built from it
            raise EmsegError(f"--target {item}: a target is sm<digits> (sm86, sm89, sm120) or 'current'")
        if target not in targets:
            targets.append(target)
    return targets


def _network_flags(trt: Any, flavour: str) -> int:
    if flavour == "tensorrt" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # TensorRT for RTX networks are always strongly typed


def build_engine(
    component: ComponentSpec, target: str, flavour: str, batch_max: int, engine_path: Path,
    package_root: Path | None = None,
) -> dict[str, Any]:
    """Parse `component`'s ONNX file and write a serialized engine for `target` to `engine_path`.

    package_root: the package directory (default: the graph's directory); `engine_path` must lie inside
    it, and the record's `file` is relative to it.
    """
    root = Path(package_root) if package_root is not None else component.path.parent
    _check_inside(root, engine_path)
    trt = import_flavour(flavour)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, flavour))
    parser = trt.OnnxParser(network, logger)
    started = time.perf_counter()
    if not parser.parse_from_file(str(component.path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors)) or "unknown error"
        raise EmsegError(f"{component.file}: the {flavour} ONNX parser rejected the graph: {errors}")
    config = builder.create_builder_config()
    if flavour == "tensorrt-rtx":
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), 0)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        spec = component.input(tensor.name)
        shapes = [spec.concrete_shape(b) for b in (1, batch_max, batch_max)]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EmsegError(f"{component.file}: {flavour} could not build an engine for {target} (see the log above)")
    seconds = time.perf_counter() - started
    fd, tmp = tempfile.mkstemp(prefix=f".{engine_path.name}.", dir=engine_path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(memoryview(serialized))
        os.replace(tmp, engine_path)  # replaces a symlink at engine_path itself, never its target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {
        "file": engine_path.relative_to(root).as_posix(),
        "target": target,
        "flavour": flavour,
        "trt_version": flavour_version(trt),
        "batch_max": batch_max,
        "profile": {"batch": [1, batch_max, batch_max]},
        "precision_source": "onnx graph (strongly typed)",
        "build_seconds": round(seconds, 3),
        "bytes": engine_path.stat().st_size,
    }


def _check_inside(root: Path, path: Path) -> None:
    """EmsegError unless `path` (through any symlinks in it) stays inside the package directory `root`."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise EmsegError(f"package {root}: refusing to write {path}, which lies outside the package directory")


def build_engines(
    package_dir: str | Path,
    targets: str | Sequence[str] = ("sm86",),
    flavour: str = "tensorrt-rtx",
    components: Sequence[str] | None = None,
    batch_max: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build engines for every (component, target) into `package_dir/engines/` and record them in the
    manifest (file, target, flavour and version, build time, size; sha256 under "files").

    components: default all (full graph, encoders, head). batch_max: default the package's.
    The package is verified first; the manifest is rewritten atomically after each engine. The package's lock
    (`package.package_lock`) is held throughout: a second `build` of the same package is refused (one line).
    """
    if batch_max is not None and batch_max < 1:
        raise EmsegError(f"--batch-max {batch_max}: must be at least 1 (leave it out for the package's)")
    items = target_items(targets)  # a malformed list is refused before TensorRT is looked for
    import_flavour(flavour)
    target_list = parse_targets(items, flavour)
    with package_lock(package_dir):  # read, build and rewrite the manifest as one writer: no record lost
        return _build_locked(package_dir, target_list, flavour, components, batch_max, progress)


def _build_locked(package_dir: str | Path, target_list: list[str], flavour: str, components: Sequence[str] | None,
                  batch_max: int | None, progress: Callable[[str], None] | None) -> list[EngineRecord]:
    say = progress or (lambda message: None)
    package = load_package(package_dir)
    names = list(components) if components else list(package.components)
    for name in names:
        package.component(name)
    if package.precision in ORT_ONLY_PRECISIONS:
        raise EmsegError(f"package {package.root} is {package.precision}, which runs in ONNX Runtime only; build "
                         "engines from an fp32, fp16 or fp8 package (emseg-rt export --precision ...)")
    oldest = QUANTISED_MIN_TARGET.get(package.precision, 0)
    older = [t for t in target_list if int(t[2:]) < oldest]
    if older:
        raise EmsegError(f"--target {','.join(older)}: an {package.precision} package builds engines for sm{oldest} "
                         "and newer only; export --precision fp16 for older GPUs")
    batch = batch_max or package.batch_max
    if batch < 1:
        raise EmsegError(f"--batch-max {batch}: must be at least 1")
    engine_dir = package.root / ENGINE_DIR
    _check_inside(package.root, engine_dir)
    try:
        engine_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise EmsegError(f"{engine_dir}: cannot write engines there ({exc.strerror or exc})") from None
    _check_inside(package.root, engine_dir)  # a symlink created meanwhile
    manifest = package.manifest
    for target in target_list:
        for name in names:
            component = package.components[name]
            say(f"building {name} for {target} with {flavour}")
            try:
                record = build_engine(component, target, flavour, batch, engine_dir / f"{name}.{target}.engine",
                                      package_root=package.root)
                record["precision"] = package.precision  # strongly typed: the graph's (fp8: its Q/DQ matmuls)
                manifest.setdefault("engines", {}).setdefault(name, {})[target] = record
                manifest["files"][record["file"]] = sha256_file(package.root / record["file"])
                manifest.setdefault("toolchain", {})[flavour.replace("-", "_")] = record["trt_version"]
                write_manifest(package.root, manifest)
            except OSError as exc:
                raise EmsegError(f"package {package.root}: cannot write the {name} engine for {target} "
                                 f"({exc.strerror or exc})") from None
    updated = package_from_manifest(package.root, manifest)
    return [updated.engines[name][target] for target in target_list for name in names]
