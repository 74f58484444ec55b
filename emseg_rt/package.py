"""The model package: a directory of ONNX graphs (and engines) described by `manifest.json`.

`emseg_rt.export` writes packages, `emseg_rt.engines` adds engines to them, and the runtime and training
read them, all through this module alone: none of them needs the exporter (or torch's ONNX exporter).

Layout (DESIGN.md §3)::

    scsam-vit-b/
      manifest.json        everything below, with the sha256 of every other file
      manifest.sha256      the sha256 of manifest.json itself (`sha256sum -c` format)
      full.onnx            uint8 tiles → logits + labels (preprocessing and class merge inside)
      sam_encoder.onnx     components: the encoders ...
      mae_encoder.onnx
      head.onnx            ... and everything after them
      *.onnx.data          external weights where a graph would pass protobuf's 2 GB limit
      engines/full.sm86.engine ...

`load_package(path)` is the only way the rest of emseg-rt (runtime, CLI, C++ host tooling) reads a package.
A package is closed: everything the graphs and engines read lies inside its directory and is covered by a
hash the loader checks. `load_package`

- checks manifest.json against manifest.sha256 (an edited or truncated manifest is refused);
- accepts only identifiers as component names (`^[a-z][a-z0-9_]*$`) and `sm<digits>` as engine targets,
  so no path built from them (engines/<component>.<target>.engine) can leave the directory;
- refuses any file path that is absolute, climbs out with '..', or resolves (through symlinks) outside the
  directory, and any symlink in the directory that points outside it;
- reads every graph's tensors without their data (`onnx.load(load_external_data=False)`) and refuses an
  external-data `location` that leaves the directory or is not a file the manifest lists and hashes;
- checks that every listed file is present and, with `verify` (the default), has its recorded sha256;
- reads every graph's inputs and outputs (`graph_signature`: the protobuf wire format, nodes and weights
  skipped; a truncated file is refused) and refuses a manifest that does not describe them: component
  records that differ from their graph, a tile, batch_max or class list out of range, an unknown family,
  and a full graph whose tile input, logits, labels or prompt inputs disagree with tile, classes and family
  (`check_manifest_fields`, `check_against_graphs`).

All of this happens before TensorRT or ONNX Runtime sees a graph. Problems a user can fix raise
`EmsegError` with a one-line message.

Manifest schema (format_version 1), keys the runtime relies on::

    {"format": "emseg-rt-package", "format_version": 1,
     "name", "family", "size", "classes": [...], "tile": T, "grid": G, "precision": "fp32"|"fp16"|"int8"|"fp32-fused"|"fp8"|"int8-wo",
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
     "aoti": {"full": {"file": "full.pt2", "device", "torch", "batch_max", "outputs", "parity", ...}},  (--aoti only;
             export/aoti.py; read by C/C++ hosts, cpp/)
     "toolchain": {"torch", "onnx", "onnxruntime", "onnxscript", "emseg_rt", ...},
     "checkpoints": [{"file": name, "sha256": hex}], "created": ISO-8601}

Shapes use the string "batch" for the dynamic batch dimension; every other dimension is static.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from emseg_rt.constants import MODEL_FAMILIES, POINT_PROMPTED_FAMILIES
from emseg_rt.errors import EmsegError

MANIFEST_NAME = "manifest.json"
MANIFEST_HASH_NAME = "manifest.sha256"  # sha256 of manifest.json's bytes, "<hex>  manifest.json\n"
COMPONENT_NAME = re.compile(r"[a-z][a-z0-9_]*")  # manifest component keys: engine file names are built from them
TARGET_NAME = re.compile(r"sm[0-9]+")  # engine targets (compute capability), also part of engine file names
PACKAGE_FORMAT = "emseg-rt-package"
FORMAT_VERSION = 1
BATCH_DIM = "batch"  # the one symbolic dimension of every graph input and output
FULL = "full"  # component: the whole per-slice graph, uint8 tiles → logits, labels
HEAD = "head"  # component: everything after the encoders
# What a package's graphs compute in: fp16 = mixed, with FP32 islands; int8 = QDQ matmuls and convolutions
# (export/int8.py); fp32-fused = fp32 with ONNX Runtime's fused attention (export/fused.py). The last two run
# in ONNX Runtime only (TensorRT builds engines of ORT_ONLY_PRECISIONS' graphs neither).
# fp8 = FP8 E4M3 Q/DQ matmuls and convolutions for TensorRT for RTX engines on sm89+ (export/fp8.py; ONNX Runtime
# runs it too, dequantising in float).
PRECISIONS = ("fp32", "fp16", "int8", "fp32-fused", "fp8", "int8-wo")
ORT_ONLY_PRECISIONS = ("int8", "fp32-fused")
POINT_PROMPTS = ("point_coords", "point_labels")  # the full graph's prompt inputs (POINT_PROMPTED_FAMILIES)
MAX_TILE = 8192  # the largest tile side a manifest may declare (SAM's is 1024)
MAX_BATCH = 4096  # the largest batch_max a manifest or engine record may declare
MAX_CLASSES = 65535  # label images are uint8 up to 255 classes, uint16 up to this


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
    precision: str = ""  # the package's precision when it was built ('fp8', ...); '' in records written before

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
            precision=str(raw.get("precision", "")),
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
    """`root / relative`, or an EmsegError when `relative` is absolute, climbs out with '..', holds a control
    character (a NUL byte, ...), or resolves (through symlinks, a loop of them included) to a place outside
    `root`."""
    if not isinstance(relative, str) or any(ord(c) < 32 or ord(c) == 127 for c in relative):
        raise EmsegError(f"package {root}: manifest names a file that is not a file name: {relative!r}")
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts or "\\" in relative:
        raise EmsegError(f"package {root}: manifest names a file outside the package: {relative!r}")
    candidate = root / relative
    if not _real(root, candidate).is_relative_to(_real(root, root)):
        raise EmsegError(f"package {root}: {relative!r} resolves outside the package directory")
    return candidate


def _real(root: Path, path: Path) -> Path:
    """`path.resolve()`; a symlink loop (RuntimeError or OSError ELOOP, by Python version) is an EmsegError."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        where = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        raise EmsegError(f"package {root}: {where} is a symlink loop or cannot be resolved "
                         f"({getattr(exc, 'strerror', None) or exc}); remove it or re-export the package") from None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` by temporary file + fsync + rename: readers see the old or the new bytes."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes `write_manifest` writes for `manifest` (indented JSON, trailing newline)."""
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> Path:
    """Write `root/manifest.json` and `root/manifest.sha256` (the manifest's own hash), each atomically
    (temporary file + rename): readers never see half a manifest.

    The two renames are not one atomic step: a crash between them leaves a manifest that `load_package`
    refuses as not matching its hash (never one accepted with the wrong contents); export writes into a
    staging directory, so only `build`'s in-place update has that window (re-run the export).
    """
    root = Path(root)
    data = manifest_bytes(manifest)
    _atomic_write(root / MANIFEST_NAME, data)
    _atomic_write(root / MANIFEST_HASH_NAME, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n".encode())
    return root / MANIFEST_NAME


class HeldLock:
    """An exclusive OS lock (`fcntl.flock`) on one lock file, held until `release` and released by the kernel
    when the process dies, so a stale lock file blocks no one. The file says who holds it (first line: pid and
    host) and what the holder is about to create (`note`): the next holder reads those notes (`previous`) to
    clean up after a holder that died, removing only what was provably its own."""

    def __init__(self, path: Path, handle: Any, previous: str) -> None:
        self.path, self.handle, self.previous = path, handle, previous
        self.created: list[str] = []  # what this holder noted

    def noted(self, kind: str) -> list[str]:
        """The names the previous holder noted under `kind`, in the order it noted them."""
        return [line.split(" ", 1)[1] for line in self.previous.splitlines()[1:] if line.startswith(f"{kind} ")]

    def note(self, kind: str, name: str) -> None:
        """Record `name` (something this holder is about to create) in the lock file, before creating it."""
        self.created.append(name)
        self.handle.write(f"{kind} {name}\n")
        self.handle.flush()

    def release(self) -> None:
        """Drop the lock. When nothing noted here (by this holder or the previous one) is left beside the lock,
        the lock file goes first, while still held, so no lock file stays beside a finished output (`hold_lock`
        re-checks that the file it locked is still the one at its path: a waiter on the deleted file retries).
        Otherwise (an interrupted swap, a staging directory that could not be removed) its notes stay for the
        next holder to clean up."""
        try:
            noted = self.created + [line.split(" ", 1)[-1] for line in self.previous.splitlines()[1:]]
            if not any((self.path.parent / name).exists() for name in noted):
                self.path.unlink(missing_ok=True)
        finally:
            self.handle.close()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_lock(path: Path, what: str) -> HeldLock:
    """Take the exclusive lock file `path` for writing `what` (e.g. "output out.zarr"), without waiting.
    EmsegError (one line) when another process holds it (naming its host and pid) or it cannot be created.
    Every writer of emseg-rt's outputs and packages locks through here, on a path derived from the real path
    (symlinks resolved) of what it writes, so two names for one directory share one lock."""
    for _ in range(100):  # a holder deleting the file as we open it: open the new one
        handle = _locked_file(path, what)
        if _still_at(handle, path):
            break
        handle.close()
    else:
        raise EmsegError(f"cannot write {what}: its lock {path} keeps being replaced; try again")
    handle.seek(0)
    previous = handle.read()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    return HeldLock(path, handle, previous)


def _locked_file(path: Path, what: str) -> Any:
    """`path` opened and flock'ed (exclusive, not waiting); EmsegError naming the holder when it is taken."""
    import fcntl  # optional: POSIX only

    try:
        handle = open(path, "a+")  # noqa: SIM115  (held open for the writer's life)
    except OSError as exc:
        raise EmsegError(f"cannot write {what}: cannot create the lock {path} ({exc.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = (handle.read().splitlines() or [""])[0].strip() or "another process"
        handle.close()
        raise EmsegError(f"{what} is being written by {holder}; wait for that run to finish (or stop it) and "
                         "try again") from None
    return handle


def _still_at(handle: Any, path: Path) -> bool:
    """Whether the open lock file is still the file at `path` (not deleted by a holder that finished)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def lock_path_beside(path: Path, what: str = "") -> Path:
    """The lock file for writing the directory `path`: `.<name>[.<what>].emseg-rt.lock` beside its real path
    (never inside it: readers of a package or a zarr hierarchy would trip on it)."""
    real = path.parent.resolve() / path.name
    if real.is_symlink():
        real = real.resolve()
    return real.parent / f".{real.name}{'.' + what if what else ''}.emseg-rt.lock"


def package_lock(root: str | Path) -> HeldLock:
    """The lock of the package directory `root` (held while `build` rewrites its manifest)."""
    root = Path(root)
    if not root.is_dir():
        raise EmsegError(f"package {root}: no such directory")
    return hold_lock(lock_path_beside(root), f"package {root}")


def _read_member_bytes(root: Path, name: str, missing: str) -> bytes:
    """Bytes of the regular file `root/name` (not a symlink leaving the package), EmsegError `missing` if absent."""
    path = root / name
    if not path.is_file():
        raise EmsegError(missing)
    safe_member(root, name)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EmsegError(f"package {root}: cannot read {name} ({exc.strerror or exc})") from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse `path/manifest.json`, checked against `manifest.sha256`, without verifying the other files
    (use `load_package` for that)."""
    root = Path(path)
    if not root.is_dir():
        raise EmsegError(f"package {root}: no such directory")
    data = _read_member_bytes(root, MANIFEST_NAME, f"package {root}: no {MANIFEST_NAME}; "
                              "is this a directory written by `emseg-rt export`?")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    except RecursionError:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} is nested too deeply to be a package manifest; "
                         "re-export the package") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} is not an emseg-rt package manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EmsegError(
            f"package {root}: manifest format_version {version!r}, this emseg-rt reads {FORMAT_VERSION}; re-export it"
        )
    recorded = _read_member_bytes(root, MANIFEST_HASH_NAME, f"package {root}: no {MANIFEST_HASH_NAME} (the "
                                  "manifest's own hash; packages from older emseg-rt lack it); re-export it "
                                  "with `emseg-rt export`")
    fields = recorded.decode("ascii", errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise EmsegError(f"package {root}: {MANIFEST_HASH_NAME} holds no sha256; re-export the package")
    if hashlib.sha256(data).hexdigest() != fields[0]:
        raise EmsegError(f"package {root}: {MANIFEST_NAME} does not match {MANIFEST_HASH_NAME} (edited or corrupt); "
                         "re-export the package (`emseg-rt export`), then `emseg-rt build` it again")
    return manifest


def check_component_name(root: Path, name: object) -> str:
    """`name` if it is a valid component name (`^[a-z][a-z0-9_]*$`), else an EmsegError."""
    if not isinstance(name, str) or not COMPONENT_NAME.fullmatch(name):
        raise EmsegError(f"package {root}: component name {name!r} is not an identifier ([a-z][a-z0-9_]*); "
                         "the manifest was not written by emseg-rt")
    return name


def check_target_name(root: Path | str, target: object) -> str:
    """`target` if it is a valid engine target (`^sm[0-9]+$`), else an EmsegError."""
    if not isinstance(target, str) or not TARGET_NAME.fullmatch(target):
        raise EmsegError(f"package {root}: engine target {target!r} is not sm<digits> (e.g. sm86)")
    return target


def check_symlinks(root: Path) -> None:
    """EmsegError when any symlink inside the package directory resolves to a place outside it."""
    base = _real(root, root)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            entry = Path(directory) / name
            if entry.is_symlink() and not _real(root, entry).is_relative_to(base):
                raise EmsegError(f"package {root}: {entry.relative_to(root).as_posix()} is a symlink to a place "
                                 "outside the package directory")


def verify_files(root: Path, manifest: Mapping[str, Any], hashes: bool = True) -> None:
    """Check every file the manifest lists: inside the package, present, and (with `hashes`) with the
    recorded sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EmsegError(f"package {root}: manifest lists no files")
    for relative, expected in files.items():
        path = safe_member(root, relative)
        if not path.is_file():
            raise EmsegError(f"package {root}: {relative} is missing")
        if hashes and sha256_file(path) != expected:
            raise EmsegError(f"package {root}: {relative} does not match its sha256 in the manifest (modified or corrupt)")


def _tensors(graph: Any) -> Any:
    """Every TensorProto of an ONNX graph that may hold data: initialisers, sparse initialisers and node
    attributes, in subgraphs (If, Loop, Scan bodies) too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Any) -> Any:
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("sparse_tensor"):
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        for sparse in attribute.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _tensors(attribute.g)
        for subgraph in attribute.graphs:
            yield from _tensors(subgraph)


def _mentions(path: Path, needle: bytes, chunk: int = 1 << 22) -> bool:
    """Whether the bytes `needle` occur anywhere in the file at `path` (read in 4 MiB chunks)."""
    tail = b""  # the last len(needle) - 1 bytes read: a match may straddle two chunks
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            window = tail + block
            if needle in window:
                return True
            tail = window[max(0, len(window) - len(needle) + 1):]
    return False


def external_data_locations(onnx_path: Path) -> set[str]:
    """The external-data `location`s the ONNX file at `onnx_path` refers to, read without loading any
    data (`onnx.load(load_external_data=False)`); EmsegError for a file ONNX cannot parse.

    A graph refers to external data only through an entry whose key is the string "location", stored
    verbatim in the protobuf; a file without those bytes has none, and is not parsed (parsing a large
    inline graph costs more than the scan)."""
    if not _mentions(onnx_path, b"location"):
        return set()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmsegError(f"{onnx_path}: not a readable ONNX graph ({detail})") from None
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node.attribute))
    locations: set[str] = set()
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        locations.add(location)
    return locations


def check_external_data(root: Path, component: ComponentSpec, files: Mapping[str, str]) -> None:
    """Refuse a graph whose external data lies outside the package or is not a file the manifest lists
    (and so hashes). Locations are relative to the graph's directory, as ONNX Runtime and TensorRT read them."""
    graph_dir = PurePosixPath(component.file).parent
    for location in sorted(external_data_locations(component.path)):
        pure = PurePosixPath(location)
        if any(ord(c) < 32 or ord(c) == 127 for c in location):
            raise EmsegError(f"package {root}: {component.file} reads external data from {location!r}, which is "
                             "not a file name (it holds a control character)")
        if (not location or pure.is_absolute() or Path(location).is_absolute() or ".." in pure.parts
                or "\\" in location):
            raise EmsegError(f"package {root}: {component.file} reads external data from {location!r}, outside the "
                             "package directory")
        relative = (graph_dir / pure).as_posix()
        safe_member(root, relative)  # resolves (symlinks included) inside the package
        if relative not in files:
            raise EmsegError(f"package {root}: {component.file} reads external data from {location!r}, which the "
                             "manifest does not list (no sha256)")
        if not (root / relative).is_file():
            raise EmsegError(f"package {root}: {relative} (external data of {component.file}) is missing")


# ------------------------------------------------------------------------ the graphs a manifest describes
#
# An ONNX file is a protobuf ModelProto; its inputs and outputs are read from the wire format alone (field
# numbers below, onnx.proto), skipping every node and weight, so a multi-GB graph costs a few thousand small
# reads. The walk also proves the file whole: every length must end inside its parent and the file must end
# where the last top-level field does (a truncated graph does not).

_MODEL_GRAPH, _MODEL_OPSET = 7, 8  # ModelProto.graph, ModelProto.opset_import
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12  # GraphProto fields
_TENSOR_NAME = 8  # TensorProto.name


class _NotOnnx(ValueError):
    """The bytes are not a complete ONNX ModelProto."""


def _varint(handle: Any, at: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the protobuf varint at byte `at` (which must end before `end`)."""
    handle.seek(at)
    data = handle.read(min(10, max(0, end - at)))
    value = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, at + i + 1
    raise _NotOnnx("a field is cut off")


def _fields(handle: Any, start: int, end: int) -> Any:
    """(field number, wire type, value start, value end) of each field of the message in bytes start..end."""
    position = start
    while position < end:
        tag, position = _varint(handle, position, end)
        number, wire = tag >> 3, tag & 7
        value = position
        if wire == 0:
            _, position = _varint(handle, position, end)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        elif wire == 2:
            length, value = _varint(handle, position, end)
            position = value + length
        else:
            raise _NotOnnx(f"wire type {wire} in field {number}")
        if number == 0 or position > end:
            raise _NotOnnx("truncated: a field runs past the end of its message")
        yield number, wire, value, position


def _value_spec(data: bytes) -> TensorSpec:
    """A graph input or output (ValueInfoProto bytes) as the manifest records it (export's `graph_io`)."""
    value = onnx.ValueInfoProto.FromString(data)
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    shape = tuple(dim.dim_param if dim.dim_param else int(dim.dim_value) for dim in tensor.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def graph_signature(onnx_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the ONNX file at `onnx_path`, initialisers listed as inputs left out, read without
    parsing nodes or weights; EmsegError (one line) when the file is not a complete ONNX model (truncated,
    cut short, or not ONNX at all)."""
    try:
        size = onnx_path.stat().st_size
        with open(onnx_path, "rb") as handle:
            top = list(_fields(handle, 0, size))
            graphs = [(start, end) for number, wire, start, end in top if number == _MODEL_GRAPH and wire == 2]
            if len(graphs) != 1 or not any(number == _MODEL_OPSET for number, *_ in top):
                raise _NotOnnx("no graph and opset")
            inputs, outputs, weights = [], [], set()
            for number, wire, start, end in _fields(handle, *graphs[0]):
                if wire == 2 and number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                    handle.seek(start)
                    (inputs if number == _GRAPH_INPUT else outputs).append(_value_spec(handle.read(end - start)))
                elif wire == 2 and number == _GRAPH_INITIALIZER:
                    weights.update(_tensor_name(handle, start, end))
    except (_NotOnnx, DecodeError, OSError) as exc:
        raise EmsegError(f"{onnx_path}: not a complete ONNX graph ({exc}); re-export the package") from None
    return tuple(spec for spec in inputs if spec.name not in weights), tuple(outputs)


def _tensor_name(handle: Any, start: int, end: int) -> list[str]:
    names = []
    for number, wire, value, stop in _fields(handle, start, end):
        if number == _TENSOR_NAME and wire == 2:
            handle.seek(value)
            names.append(handle.read(stop - value).decode("utf-8", errors="replace"))
    return names


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


def _whole(root: Path, manifest: Mapping[str, Any], key: str, low: int, high: int, what: str) -> int:
    """manifest[key] as an int in low..high (a JSON integer, not 128.5, true or 1e400), else EmsegError."""
    value = manifest[key]  # a missing key: KeyError, "malformed manifest.json" as the C++ host says
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EmsegError(f"package {root}: manifest {key} {value!r} is not {what} (a whole number {low}..{high}); "
                         "the manifest was not written by emseg-rt: re-export the package")
    return value


def check_manifest_fields(root: Path, manifest: Mapping[str, Any]) -> None:
    """The package-wide fields in range: tile, batch_max, a class list of distinct names, a known family."""
    _whole(root, manifest, "tile", 1, MAX_TILE, "a tile side")
    _whole(root, manifest, "batch_max", 1, MAX_BATCH, "a largest batch")
    classes = manifest.get("classes")
    if (not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        raise EmsegError(f"package {root}: manifest classes must be 1..{MAX_CLASSES} distinct names; re-export "
                         "the package")
    if manifest.get("family") not in MODEL_FAMILIES:
        raise EmsegError(f"package {root}: manifest family {manifest.get('family')!r} is not one this emseg-rt "
                         f"knows ({', '.join(MODEL_FAMILIES)}); re-export the package")
    for component, targets in (manifest.get("engines") or {}).items():
        for target, record in (targets.items() if isinstance(targets, dict) else ()):
            _whole(root, record if isinstance(record, dict) else {}, "batch_max", 1, MAX_BATCH,
                   f"the largest batch of engine {component}/{target}")


def check_against_graphs(package: ModelPackage) -> None:
    """EmsegError (one line) unless every component's graph has the inputs and outputs its manifest record
    lists (read from the ONNX file: `graph_signature`) and the package-wide fields agree with the full graph:
    the tile input (uint8 [batch, 1, tile, tile]), logits [batch, len(classes), tile, tile] and labels [batch,
    tile, tile], and the prompt inputs the family takes (none, or point_coords and point_labels)."""
    root = package.root
    for spec in package.components.values():
        inputs, outputs = graph_signature(spec.path)
        for kind, listed, found in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
            if tuple(listed) != found:
                raise EmsegError(f"package {root}: the manifest lists {spec.file}'s {kind} as {_specs(listed)} but "
                                 f"the graph has {_specs(found)}; re-export the package")
    full, tile, classes = package.components[FULL], package.tile, len(package.classes)
    tiles = TensorSpec(package.input.name, "uint8", (BATCH_DIM, 1, tile, tile))
    prompts = POINT_PROMPTS if package.family in POINT_PROMPTED_FAMILIES else ()
    checks = [("input", _specs([package.input]), _specs([tiles])),
              (f"{tiles.name} input", _specs(s for s in full.inputs if s.name == tiles.name), _specs([tiles])),
              ("inputs", tuple(s.name for s in full.inputs), (tiles.name, *prompts)),
              ("prompts", tuple(package.manifest.get("prompts", ())), prompts),
              ("logits", _shape_of(full, "logits"), (BATCH_DIM, classes, tile, tile)),
              ("labels", _shape_of(full, "labels"), (BATCH_DIM, tile, tile))]
    for what, found, want in checks:
        if found != want:
            raise EmsegError(f"package {root}: its manifest says {package.family}, tile {tile}, {classes} classes, so "
                             f"the full graph's {what} should be {want}, but it is {found}: the manifest does not "
                             "describe its graph; re-export the package")


def _specs(specs: Any) -> str:
    return ", ".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in specs) or "none"


def _shape_of(component: ComponentSpec, output: str) -> tuple[int | str, ...] | None:
    return next((spec.shape for spec in component.outputs if spec.name == output), None)


def package_from_manifest(root: Path, manifest: dict[str, Any]) -> ModelPackage:
    """Build the typed view of a parsed manifest (paths checked to stay inside `root`; hashes not checked)."""
    root = Path(root)
    files = manifest.get("files", {})
    try:
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        check_manifest_fields(root, manifest)
        components = {check_component_name(root, name): _component(root, name, raw, files)
                      for name, raw in manifest["components"].items()}
        if FULL not in components:
            raise EmsegError(f"package {root}: manifest has no '{FULL}' component")
        engines: dict[str, dict[str, EngineRecord]] = {}
        for component, targets in manifest.get("engines", {}).items():
            check_component_name(root, component)
            for target, raw in targets.items():
                check_target_name(root, target)
                if raw.get("target") != target:
                    raise EmsegError(f"package {root}: engine record {component}/{target} names target "
                                     f"{raw.get('target')!r}")
                safe_member(root, str(raw["file"]))
                if str(raw["file"]) not in files:
                    raise EmsegError(f"package {root}: engine {raw['file']} has no sha256 in the manifest")
                engines.setdefault(component, {})[target] = EngineRecord.from_dict(root, component, raw)
        for component, raw in manifest.get("aoti", {}).items():  # AOTInductor .pt2 per component (export/aoti.py)
            check_component_name(root, component)
            safe_member(root, str(raw["file"]))
            if str(raw["file"]) not in files:
                raise EmsegError(f"package {root}: AOTInductor package {raw['file']} has no sha256 in the manifest")
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
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EmsegError(f"package {root}: malformed {MANIFEST_NAME} ({type(exc).__name__}: {exc})") from None


def load_package(path: str | Path, verify: bool = True) -> ModelPackage:
    """Open a model package directory.

    Refuses (EmsegError, one line): a manifest that does not match manifest.sha256, a component or engine
    target that is not a plain name, a file path or symlink that leaves the directory, a missing listed
    file, ONNX external data outside the package or not listed in the manifest, and, with `verify` (the
    default), any listed file whose sha256 differs from the manifest's. See the module docstring.
    """
    root = Path(path)
    manifest = read_manifest(root)
    package = package_from_manifest(root, manifest)
    check_symlinks(root)
    verify_files(root, manifest, hashes=verify)
    for component in package.components.values():
        check_external_data(root, component, manifest["files"])
    check_against_graphs(package)
    return package
