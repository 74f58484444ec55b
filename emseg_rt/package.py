"""The model package: a directory of ONNX graphs (and engines) described by `manifest.json`.

`emseg_rt.export` writes packages, `emseg_rt.engines` adds engines to them, and the runtime and training
read them, all through this module alone: none of them needs the exporter (or torch's ONNX exporter).

Layout (DESIGN.md §3)::

    scsam-vit-b/
      manifest.json        everything below, with the sha256 of every other file
      full.onnx            uint8 tiles → logits + labels (preprocessing and class merge inside)
      sam_encoder.onnx     components: the encoders ...
      mae_encoder.onnx
      head.onnx            ... and everything after them
      *.onnx.data          external weights where a graph would pass protobuf's 2 GB limit
      engines/full.sm86.engine ...

`load_package(path)` is the only way the rest of emseg-rt (runtime, CLI, C++ host tooling) reads a package:
it parses the manifest, refuses any file path that leaves the package directory, and verifies the sha256
of every listed file. Problems a user can fix raise `EmsegError` with a one-line message.

Manifest schema (format_version 1), keys the runtime relies on::

    {"format": "emseg-rt-package", "format_version": 1,
     "name", "family", "size", "classes": [...], "tile": T, "grid": G, "precision": "fp32"|"fp16",
     "batch_max": N, "opset": 18,
     "input": {"name": "tiles", "dtype": "uint8", "shape": ["batch", 1, T, T], "layout": "NCHW",
               "normalisation": {"inside_graph": true, "<encoder>": {...}}},
     "components": {"<name>": {"role": "full"|"encoder"|"head", "file": "x.onnx", "external_data": [...],
                               "inputs": [{"name", "dtype", "shape"}], "outputs": [...]}},
     "files": {"<relative path>": "<sha256 hex>"},
     "parity": {"passed": bool, "allowed_failure": bool, "seed", "batch", "label_threshold",
                "targets": {"rel_error", "label_agreement", "label_metric": "agreement"|"agreement_decided"},
                "components": {"<name>": {"passed", "outputs": {"<float output>": {"max_abs", "rel_error",
                    "finite", "passed"}, "labels": {"agreement", "agreement_decided", "decided_fraction",
                    "tie_tolerance", "passed"}}}}},
     "engines": {"<component>": {"<target>": {"file", "target", "flavour", "trt_version", ...}}},
     "toolchain": {"torch", "onnx", "onnxruntime", "onnxscript", "emseg_rt", ...},
     "checkpoints": [{"file": name, "sha256": hex}], "created": ISO-8601}

Shapes use the string "batch" for the dynamic batch dimension; every other dimension is static.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from emseg_rt.errors import EmsegError

MANIFEST_NAME = "manifest.json"
PACKAGE_FORMAT = "emseg-rt-package"
FORMAT_VERSION = 1
BATCH_DIM = "batch"  # the one symbolic dimension of every graph input and output
FULL = "full"  # component: the whole per-slice graph, uint8 tiles → logits, labels
HEAD = "head"  # component: everything after the encoders
PRECISIONS = ("fp32", "fp16")  # what a package's graphs compute in (fp16 = mixed, with FP32 islands)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, ONNX dtype name ('uint8', 'float32', 'float16', 'int64', ...),
    shape with the string 'batch' for the dynamic batch dimension."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), tuple(raw["shape"]))

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch dimension set to `batch`."""
        return tuple(batch if dim == BATCH_DIM else int(dim) for dim in self.shape)


@dataclass(frozen=True)
class EngineRecord:
    """One built engine: `file` relative to the package, the GPU `target` ('sm86', ...), the TensorRT
    `flavour` ('tensorrt-rtx' or 'tensorrt') and `trt_version` it needs, and how it was built."""

    component: str
    target: str
    file: str
    path: Path
    flavour: str
    trt_version: str
    batch_max: int
    build_seconds: float
    bytes: int

    @classmethod
    def from_dict(cls, root: Path, component: str, raw: Mapping[str, Any]) -> EngineRecord:
        return cls(
            component=component,
            target=str(raw["target"]),
            file=str(raw["file"]),
            path=root / str(raw["file"]),
            flavour=str(raw["flavour"]),
            trt_version=str(raw["trt_version"]),
            batch_max=int(raw["batch_max"]),
            build_seconds=float(raw.get("build_seconds", 0.0)),
            bytes=int(raw.get("bytes", 0)),
        )


@dataclass(frozen=True)
class ComponentSpec:
    """One ONNX graph of the package: 'full', an encoder ('sam_encoder', 'mae_encoder') or 'head'."""

    name: str
    role: str
    file: str
    path: Path  # absolute path of the .onnx file (its external data, if any, lies beside it)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, verified model package. `manifest` is the raw JSON for anything not surfaced here."""

    root: Path
    manifest: dict[str, Any]
    name: str
    family: str
    classes: tuple[str, ...]
    tile: int
    precision: str
    batch_max: int
    input: TensorSpec
    normalisation: dict[str, Any]
    components: dict[str, ComponentSpec]
    engines: dict[str, dict[str, EngineRecord]] = field(default_factory=dict)

    @property
    def full_onnx_path(self) -> Path:
        """Path of `full.onnx`: the whole per-slice graph (uint8 tiles → logits, labels)."""
        return self.components[FULL].path

    @property
    def encoder_names(self) -> tuple[str, ...]:
        return tuple(name for name, spec in self.components.items() if spec.role == "encoder")

    @property
    def prompt_inputs(self) -> tuple[TensorSpec, ...]:
        """Inputs of the full graph besides the tiles (vanilla-sam's point prompts; empty otherwise)."""
        return tuple(spec for spec in self.components[FULL].inputs if spec.name != self.input.name)

    @property
    def parity(self) -> dict[str, Any]:
        return self.manifest.get("parity", {})

    def onnx_path(self, component: str = FULL) -> Path:
        return self.component(component).path

    def component(self, name: str) -> ComponentSpec:
        if name not in self.components:
            raise EmsegError(f"package {self.root}: no component {name!r} (has {', '.join(self.components)})")
        return self.components[name]

    def engine(self, component: str, target: str) -> EngineRecord:
        """The engine record for `component` on `target` ('sm86', ...), or an EmsegError naming the fix."""
        record = self.engines.get(component, {}).get(target)
        if record is None:
            built = sorted(self.engines.get(component, {}))
            raise EmsegError(
                f"package {self.root}: no {component} engine for {target} (built: {', '.join(built) or 'none'}); "
                f"run `emseg-rt build {self.root} --target {target}`"
            )
        return record


# ---------------------------------------------------------------------------------------------- helpers


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (ViT-H graphs are several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_member(root: Path, relative: str) -> Path:
    """`root / relative`, or an EmsegError when `relative` is absolute, climbs out with '..', or resolves
    (through symlinks) to a place outside `root`."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts or "\\" in relative:
        raise EmsegError(f"package {root}: manifest names a file outside the package: {relative!r}")
    candidate = root / relative
    if not candidate.resolve().is_relative_to(root.resolve()):
        raise EmsegError(f"package {root}: {relative!r} resolves outside the package directory")
    return candidate


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> Path:
    """Write `root/manifest.json` atomically (temporary file + rename): readers never see half a manifest."""
    root = Path(root)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, root / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root / MANIFEST_NAME


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse `path/manifest.json` without verifying files (use `load_package` for that)."""
    root = Path(path)
    if not root.is_dir():
        raise EmsegError(f"package {root}: no such directory")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise EmsegError(f"package {root}: no {MANIFEST_NAME}; is this a directory written by `emseg-rt export`?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} is not an emseg-rt package manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EmsegError(
            f"package {root}: manifest format_version {version!r}, this emseg-rt reads {FORMAT_VERSION}; re-export it"
        )
    return manifest


def verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    """Check every file the manifest lists: inside the package, present, and with the recorded sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EmsegError(f"package {root}: manifest lists no files")
    for relative, expected in files.items():
        path = safe_member(root, relative)
        if not path.is_file():
            raise EmsegError(f"package {root}: {relative} is missing")
        if sha256_file(path) != expected:
            raise EmsegError(f"package {root}: {relative} does not match its sha256 in the manifest (modified or corrupt)")


def _component(root: Path, name: str, raw: Mapping[str, Any], files: Mapping[str, str]) -> ComponentSpec:
    file = str(raw["file"])
    path = safe_member(root, file)
    external = tuple(str(item) for item in raw.get("external_data", ()))
    for relative in (file, *external):
        safe_member(root, relative)
        if relative not in files:
            raise EmsegError(f"package {root}: {relative} (component {name}) has no sha256 in the manifest")
    return ComponentSpec(
        name=name,
        role=str(raw["role"]),
        file=file,
        path=path,
        inputs=tuple(TensorSpec.from_dict(item) for item in raw["inputs"]),
        outputs=tuple(TensorSpec.from_dict(item) for item in raw["outputs"]),
        external_data=external,
    )


def package_from_manifest(root: Path, manifest: dict[str, Any]) -> ModelPackage:
    """Build the typed view of a parsed manifest (paths checked to stay inside `root`; hashes not checked)."""
    root = Path(root)
    files = manifest.get("files", {})
    try:
        components = {name: _component(root, name, raw, files) for name, raw in manifest["components"].items()}
        if FULL not in components:
            raise EmsegError(f"package {root}: manifest has no '{FULL}' component")
        engines: dict[str, dict[str, EngineRecord]] = {}
        for component, targets in manifest.get("engines", {}).items():
            for target, raw in targets.items():
                safe_member(root, str(raw["file"]))
                if str(raw["file"]) not in files:
                    raise EmsegError(f"package {root}: engine {raw['file']} has no sha256 in the manifest")
                engines.setdefault(component, {})[target] = EngineRecord.from_dict(root, component, raw)
        return ModelPackage(
            root=root,
            manifest=manifest,
            name=str(manifest["name"]),
            family=str(manifest["family"]),
            classes=tuple(manifest["classes"]),
            tile=int(manifest["tile"]),
            precision=str(manifest["precision"]),
            batch_max=int(manifest["batch_max"]),
            input=TensorSpec.from_dict(manifest["input"]),
            normalisation=dict(manifest["input"].get("normalisation", {})),
            components=components,
            engines=engines,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EmsegError(f"package {root}: malformed {MANIFEST_NAME} ({type(exc).__name__}: {exc})") from None


def load_package(path: str | Path, verify: bool = True) -> ModelPackage:
    """Open a model package directory.

    Refuses a manifest that names a file outside the directory and, with `verify` (the default), any
    listed file that is missing or whose sha256 differs from the manifest's. Raises EmsegError.
    """
    root = Path(path)
    manifest = read_manifest(root)
    package = package_from_manifest(root, manifest)
    if verify:
        verify_files(root, manifest)
    return package
