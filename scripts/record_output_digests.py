"""Record the sha256 of every file that a set of representative `segment` runs write, so a refactor can show
that every output stays byte-identical (`tests/test_output_bytes.py` reruns the same cases and compares).

    python scripts/record_output_digests.py --out tests/data/output_digests.json
    python scripts/record_output_digests.py --twice      # run every case twice and list files that differ

Each case segments a small generated phantom (or a smoothed random volume) on the CPU with one torch thread
and returns {relative path: sha256} for the tree it wrote (an in-memory `segment_labels` result is hashed as
`labels.npy`-like bytes: dtype, shape and C-order data). Only the public API is used: `segment_volume`,
`segment_labels`, `emseg_rt.data`, the `emseg-rt` console entry point (`emseg_rt.cli.main`) and the file system.

What is pinned, and what is left out, found by running every case twice and diffing (`--twice`):
- The input's files get a fixed modification time (PINNED_MTIME_NS) after they are written: run records
  before issue 26 held an input fingerprint over the input files' sizes and mtimes (now the input's
  description, and each block's marker the digest of its input's values: neither depends on mtimes).
- `.emseg-rt/instances-*/` (the instance stage's scratch: provisional IDs, boundary pairs, equivalence table
  and its own done markers) is left out: issue 24 moves that stage's done markers and status onto the output's
  own, so its bookkeeping may change; the instance label images it writes (`<class>_instances/`) are compared.
- `.emseg-rt/status/` (the run's status for `emseg-rt status`: start and update times, rate, pid, host and
  the final report) is left out: it differs every run by design.
- The `--report` JSON is not compared byte for byte: it holds wall times, throughputs, the backend's idle
  fraction and absolute paths. It is recorded (`report.json#content`) with the timing keys dropped
  (`*_seconds`, `*_per_second`, VARYING_REPORT_KEYS) and the work directory replaced by `<work>`.
- The onnxruntime run (`cli_default_options`) names its backend by the exported package's sha256, and the
  exported ONNX graph carries torch.onnx's per-node metadata `pkg.torch.onnx.stack_trace` with the absolute
  paths and line numbers of the Python source that was traced: the package digest (two checkouts in two
  directories give two) and so the run's config hash change whenever that source moves or is edited. In
  that case the package digest and the config hash are replaced by `<package>` and `<config>` in file paths
  (`done-<config[:16]>`), in every zarr.json and in the report before hashing (`without_package_identity`).
- The run's lock file lives beside the output (`.<name>.emseg-rt.lock`), outside every digested tree.
Nothing else varies between runs: the run record, done markers, chunks and every zarr.json are compared byte
for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A file is left out when a directory on its path is named EXCLUDED_PREFIX* inside a `.emseg-rt` directory
# (the instance stage's scratch; see the module docstring).
EXCLUDED_PREFIX = "instances-"
# ... and the group of this name directly inside a `.emseg-rt` directory: the run's status (times, rate, pid,
# host, the final report; `emseg_rt.runtime.status`), different every run by design.
EXCLUDED_STATUS_GROUP = "status"
# Keys of the --report JSON whose values differ run to run besides `*_seconds` and `*_per_second`.
VARYING_REPORT_KEYS = ("backend_idle_fraction",)
PINNED_MTIME_NS = 1_600_000_000 * 10**9  # every input file's mtime (the run record fingerprints it)

PHANTOM_SHAPE = (4, 160, 160)  # 2×2 tiles of the default model (128², halo) per plane: seams are exercised
PHANTOM_SEED = 7


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def excluded(relative: Path) -> bool:
    """True for files under `.emseg-rt/instances-*/` and `.emseg-rt/status/`, anywhere in the tree."""
    parts = relative.parts
    return any(a == ".emseg-rt" and (b.startswith(EXCLUDED_PREFIX) or b == EXCLUDED_STATUS_GROUP)
               for a, b in zip(parts, parts[1:-1]))


def digest_tree(root: Path, placeholders: dict[str, str] | None = None) -> dict[str, str]:
    """{path relative to root (posix): sha256 of its bytes} for every file under root, excluded ones left out.

    placeholders: {text: placeholder} replaced in relative paths and in the bytes of zarr.json files first.
    """
    placeholders = placeholders or {}
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not excluded(relative):
            data, name = path.read_bytes(), relative.as_posix()
            for text, placeholder in placeholders.items():
                name = name.replace(text, placeholder)
                if path.name == "zarr.json":
                    data = data.replace(text.encode(), placeholder.encode())
            found[name] = sha256(data)
    return found


def without_package_identity(output: Path) -> dict[str, str]:
    """{config hash: "<config>", its 16-character prefix: "<config>", package sha256: "<package>"} read from
    the run record of an onnxruntime run (see the module docstring for why they vary)."""
    record = json.loads((output / ".emseg-rt" / "zarr.json").read_text())["attributes"]["emseg_rt_run"]
    run_hash, backend = record["config_hash"], record["config"]["backend"]
    return {run_hash: "<config>", run_hash[:16]: "<config>", backend.rsplit(":", 1)[1]: "<package>"}


def digest_array(array: np.ndarray) -> str:
    """sha256 of dtype, shape and C-order bytes of an in-memory result."""
    array = np.ascontiguousarray(array)
    return sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())


def digest_report(path: Path, work: Path, placeholders: dict[str, str] | None = None) -> str:
    """sha256 of the --report JSON with the work directory written `<work>`, `placeholders` replaced and the
    timing keys dropped."""
    text = path.read_text().replace(str(work), "<work>")
    for value, placeholder in (placeholders or {}).items():
        text = text.replace(value, placeholder)
    report = json.loads(text)
    kept = {key: value for key, value in report.items()
            if not key.endswith(("_seconds", "_per_second")) and key not in VARYING_REPORT_KEYS}
    return sha256(json.dumps(kept, sort_keys=True).encode())


def pin_mtimes(root: Path) -> Path:
    """Give every file under root the modification time PINNED_MTIME_NS (→ the same input fingerprint)."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(PINNED_MTIME_NS, PINNED_MTIME_NS))
    return root


# ------------------------------------------------------------------------------------------------ inputs


def phantom_input(work: Path, shape: tuple[int, int, int] = PHANTOM_SHAPE) -> Path:
    """The phantom OME-Zarr (image + labels/ground_truth) the default-model cases segment."""
    from emseg_rt.data import generate_phantom, write_phantom

    return pin_mtimes(write_phantom(work / "cell.zarr", generate_phantom(shape, seed=PHANTOM_SEED)))


def smooth_random_input(work: Path) -> Path:
    """A smoothed random OME-Zarr volume (4, 90, 90) for the random-weight prompt-das-tiny model."""
    from scipy import ndimage

    from emseg_rt.io import write_ome_image

    data = np.random.default_rng(4).integers(0, 256, (4, 90, 90), dtype=np.uint8)
    return pin_mtimes(write_ome_image(work / "in.zarr", ndimage.uniform_filter(data, 5)))


# ------------------------------------------------------------------------------------------------- cases


def segment_case(shape: tuple[int, int, int] = PHANTOM_SHAPE, **options) -> Callable[[Path], dict[str, str]]:
    """A case that runs `segment_volume(phantom of shape, out, backend="torch", device="cpu", **options)` and
    digests `out`."""

    def run(work: Path) -> dict[str, str]:
        from emseg_rt.runtime import segment_volume

        out = work / "out.zarr"
        segment_volume(phantom_input(work, shape), out, **{"backend": "torch", "device": "cpu", **options})
        return digest_tree(out)

    return run


def cli_default_options(work: Path) -> dict[str, str]:
    """`emseg-rt segment cell.zarr --out out.zarr --device cpu --precision fp32 --quiet --report r.json`: the
    default model, the `auto` backend (onnxruntime on the CPU: exports the package into $EMSEG_RT_CACHE first)
    and every other option at its default. Every case runs on the CPU, GPU present or not. The precision is
    pinned: its default, `auto`, measures torch bf16 against ONNX Runtime fp32 on a CPU with native bf16 and
    takes the faster (runtime/cpu_choice.py), so which one runs, and so the bytes, depend on the machine."""
    from emseg_rt.cli import main

    out, report = work / "out.zarr", work / "r.json"
    argv = ["emseg-rt", "segment", str(phantom_input(work)), "--out", str(out), "--device", "cpu",
            "--precision", "fp32", "--quiet", "--report", str(report)]
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(sys.stderr):
            main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"emseg-rt segment exited with {exc.code}") from exc
    finally:
        sys.argv = saved
    placeholders = without_package_identity(out)
    return {**digest_tree(out, placeholders), "report.json#content": digest_report(report, work, placeholders)}


def into_input(work: Path) -> dict[str, str]:
    """--into-input on the phantom OME-Zarr with --instances granules: the whole input tree is the output."""
    from emseg_rt.runtime import segment_volume

    src = phantom_input(work)
    segment_volume(src, None, into_input=True, backend="torch", device="cpu", block=3, instances="granules")
    return digest_tree(src)


def labels_array(work: Path) -> dict[str, str]:
    """`segment_labels` of the phantom's image array (in memory), Gaussian blending, block 3."""
    from emseg_rt.data import generate_phantom
    from emseg_rt.runtime import segment_labels

    image = generate_phantom(PHANTOM_SHAPE, seed=PHANTOM_SEED).image
    labels = segment_labels(image, backend="torch", device="cpu", block=3, blend="gaussian")
    return {"labels(array)": digest_array(labels)}


def prompt_das_auto(work: Path) -> dict[str, str]:
    """prompt-das-tiny (its fixed-seed random init) with --prompts auto, --probabilities and --instances
    mitochondria: density peaks as prompts and the density-seeded marker watershed."""
    from emseg_rt.runtime import segment_volume

    out = work / "out.zarr"
    segment_volume(smooth_random_input(work), out, model="prompt-das-tiny", backend="torch", device="cpu", block=3,
                   prompts="auto", peak_threshold=0.05, probabilities=True, instances="mitochondria")
    return digest_tree(out)


def prompt_das_labels(work: Path) -> dict[str, str]:
    """`segment_labels` with prompt-das-tiny and --prompts auto on the same volume (the array API's two passes)."""
    from emseg_rt.io import read_volume
    from emseg_rt.runtime import segment_labels

    data = read_volume(smooth_random_input(work))
    labels = segment_labels(data, model="prompt-das-tiny", backend="torch", device="cpu", block=3, prompts="auto",
                            peak_threshold=0.05)
    return {"labels(array)": digest_array(labels)}


CASES: dict[str, Callable[[Path], dict[str, str]]] = {
    "cli_default_options": cli_default_options,
    "torch_default": segment_case(),
    "gaussian_blend": segment_case(blend="gaussian"),
    "probabilities": segment_case(probabilities=True, block=3),
    "axis_y": segment_case((6, 32, 100), axis="y", block=12),  # 32 planes (6, 100), one tile each
    "levels_2_halo_8": segment_case(levels=2, block=2, halo=8),
    "instances_mitochondria": segment_case(instances="mitochondria", block=2),
    "tta_window": segment_case(tta=True, window="1%,99%", block=4),
    "into_input": into_input,
    "labels_array": labels_array,
    "prompt_das_auto": prompt_das_auto,
    "prompt_das_labels": prompt_das_labels,
}


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread (as the tests run), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_case(name: str, work: Path) -> dict[str, str]:
    """Run case `name` in the empty directory `work` → its digests."""
    work.mkdir(parents=True, exist_ok=True)
    with one_thread():
        return CASES[name](work)


def record(names: list[str]) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="emseg-digests-") as tmp:
        return {name: run_case(name, Path(tmp) / name) for name in names}


def recorded_with() -> dict[str, str]:
    """Where the digests came from: the emseg_rt checkout's commit and the numeric libraries' versions."""
    import subprocess

    import onnxruntime
    import torch

    import emseg_rt

    source = Path(emseg_rt.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"commit": commit.stdout.strip() or "unknown", "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the digests here (JSON)")
    parser.add_argument("--only", nargs="*", default=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--twice", action="store_true", help="run every case twice and print what differs")
    args = parser.parse_args()
    import emseg_rt

    print(f"emseg_rt from {Path(emseg_rt.__file__).parent}", file=sys.stderr)
    first = record(args.only)
    if args.twice:
        second = record(args.only)
        for name in args.only:
            a, b = first[name], second[name]
            for path in sorted(set(a) | set(b)):
                if a.get(path) != b.get(path):
                    print(f"{name}: {path} differs", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recorded_with": recorded_with(), "cases": first}, indent=1,
                                       sort_keys=True) + "\n")
        print(f"wrote {args.out}: {sum(map(len, first.values()))} digests in {len(first)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
