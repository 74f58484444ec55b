"""`segment_files`: `segment DIR|PATTERN --out OUTDIR`, one segment run per file, one output each.

The prior art: micro-sam's `--pattern` (a glob over a folder) and nnU-Net's folder in / folder out, split over
jobs with `-num_parts` / `-part_id`. This is a loop over `SegmentRequest`s calling `run_segment` (the same
block driver, the same outputs as one file at a time), with one backend loaded once and passed to every run.

- Which files (`folder_inputs`): a path that exists is taken literally first (so a name holding `*`, `?` or
  `[` is still one file). A file, a zarr or N5 container, or a folder holding TIFF files and nothing else
  segment reads is one input (a folder of TIFF pages is one stack, as `segment` has always read it: pass
  `'DIR/*.tif'` to segment each file on its own). Any other folder is a folder run over its entries that
  segment reads: TIFF, PNG, JPEG and HDF5 files, zarr and N5 containers (hidden ones skipped). A path that does
  not exist and holds glob characters is a pattern, expanded here with `glob.glob` (`**` recursive), never by
  a shell. Either way the list is sorted by path; entries inside OUTDIR are left out (outputs never become
  inputs on a rerun).
- Where each goes: OUTDIR/<name>.zarr, <name> the file's name without its suffix (and `.ome`); two inputs
  with one name are refused before anything runs. OUTDIR is created if its parent exists.
- Reruns: an output whose root says "complete" is kept as it is (whatever options made it; `overwrite`
  redoes it); an incomplete one is resumed (`--resume`: finished blocks kept, the rest computed, refused in
  one line if it was started with other options).
- `part` (K, N): the K-th of N interleaved shares of the sorted list (files K-1, K-1+N, ...), so N jobs
  started with 1/N .. N/N segment every file once, whatever each output's state.
- A file that fails with `EmsegError` is reported in one line and the loop goes on; anything else is a bug
  and stops it.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zarr

from emseg_rt.checks import GLOB_CHARACTERS
from emseg_rt.errors import EmsegError
from emseg_rt.io.hdf5 import HDF5_SUFFIXES
from emseg_rt.io.images2d import IMAGE_SUFFIXES
from emseg_rt.io.n5 import looks_like_n5
from emseg_rt.io.tiff import TIFF_SUFFIXES
from emseg_rt.io.zarr_reader import looks_like_zarr
from emseg_rt.runtime.report import SegmentReport
from emseg_rt.runtime.request import SegmentRequest, open_backend
from emseg_rt.runtime.segment import run_segment

Say = Callable[[str], None]
FILE_SUFFIXES = TIFF_SUFFIXES + IMAGE_SUFFIXES + HDF5_SUFFIXES


@dataclass
class FileOutcome:
    """What a folder run did with one input: status "segmented", "complete" (an earlier run's complete output,
    kept) or "failed" (`message` says why, in one line); `report` for the ones segmented."""

    input: Path
    output: Path
    status: str
    message: str = ""
    report: SegmentReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"input": str(self.input), "output": str(self.output), "status": self.status,
                "message": self.message, "report": self.report.to_dict() if self.report else None}


def parse_part(text: str | None) -> tuple[int, int]:
    """`--part K/N` as (K, N), 1 <= K <= N; None → (1, 1). EmsegError (one line) for anything else."""
    if text is None:
        return 1, 1
    k, _, n = text.partition("/")
    if not (k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise EmsegError(f"--part {text!r}: give K/N with 1 <= K <= N (job K of N, e.g. --part 1/4)")
    return int(k), int(n)


def folder_inputs(source: Any) -> list[Path] | None:
    """The inputs of a folder run, sorted; None when `source` is one input (the module docstring says which).
    EmsegError (one line) for a folder or pattern with nothing segment reads."""
    if not isinstance(source, (str, Path)):
        return None  # an array in memory
    path = Path(source)
    if path.exists():  # taken literally first: glob characters in a real name
        if not path.is_dir() or looks_like_zarr(path) or looks_like_n5(path):
            return None
        entries = _segmentable(path.iterdir())
        if not entries or all(p.is_file() and p.suffix.lower() in TIFF_SUFFIXES for p in entries):
            return None  # a folder of TIFF pages is one stack; an empty one is refused by the reader
        return entries
    text = str(source)
    if not any(c in text for c in GLOB_CHARACTERS):
        return None  # open_volume says that it does not exist
    entries = _segmentable(Path(p) for p in glob.glob(text, recursive=True))
    if not entries:
        raise EmsegError(f"pattern {text!r} matches no file segment reads ({', '.join(FILE_SUFFIXES)} files, zarr "
                         "or N5 containers); quote it so that the shell does not expand it")
    return entries


def _segmentable(paths: Any) -> list[Path]:
    """The paths segment reads (files by suffix, zarr / N5 containers), hidden ones skipped, sorted."""
    def readable(p: Path) -> bool:
        if p.is_file():
            return p.suffix.lower() in FILE_SUFFIXES
        return p.is_dir() and (looks_like_zarr(p) or looks_like_n5(p))

    return sorted((p for p in paths if not p.name.startswith(".") and readable(p)), key=str)


def output_for(source: Path, out_dir: Path) -> Path:
    """OUTDIR/<name>.zarr: the input's name without its suffix and a trailing `.ome` (a.ome.tif → a.zarr)."""
    stem = source.name[: -len(source.suffix)] if source.suffix else source.name
    stem = stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem
    return out_dir / f"{stem}.zarr"


def is_complete(output: Path) -> bool:
    """Whether `output` is a segment output whose root says "complete"."""
    try:
        return zarr.open_group(str(output), mode="r").attrs.get("emseg_rt", {}).get("status") == "complete"
    except Exception:  # missing, not zarr, unreadable: not a complete output
        return False


def plan_outputs(inputs: Sequence[Path], out_dir: Path, part: tuple[int, int] = (1, 1)) -> list[tuple[Path, Path]]:
    """(input, output) of this job's share of `inputs` (`part`); inputs inside `out_dir` left out. EmsegError for
    two inputs that would write one output, or an `out_dir` that cannot be a folder of outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EmsegError(f"--out {out_dir} is a file; in folder mode --out is the folder the outputs go into")
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise EmsegError(f"--out {out_dir}: its parent folder {out_dir.parent} does not exist; create it first")
    if looks_like_zarr(out_dir):
        raise EmsegError(f"--out {out_dir} is a zarr container; in folder mode --out is the folder the outputs "
                         "(one <name>.zarr per input) go into")
    root = out_dir.resolve()
    kept = [p for p in inputs if root != p.resolve() and root not in p.resolve().parents]
    pairs = [(p, output_for(p, out_dir)) for p in kept]
    seen: dict[Path, Path] = {}
    for source, output in pairs:
        if output in seen:
            raise EmsegError(f"{seen[output]} and {source} would both be written to {output}; rename one, or "
                             "select the files with a pattern")
        seen[output] = source
    k, n = part
    return pairs[k - 1::n]


def segment_files(inputs: str | Path | Sequence[Path], out_dir: str | Path, *, part: tuple[int, int] = (1, 1),
                  say: Say | None = None, **choices: Any) -> list[FileOutcome]:
    """Segment every input of a folder run (a folder, a pattern, or a list of paths) into OUTDIR/<name>.zarr.

    choices: `segment_volume`'s keywords (model, backend, device, block, instances, ...), the same for every file;
             `resume` is implied, `overwrite` redoes complete outputs too, `report` gets the JSON list of every
             file's outcome. A backend name is loaded once and used for every file (not with `dask`).
    Returns one FileOutcome per input of this job's `part`, in order; `say` gets one line per file."""
    if choices.get("into_input"):
        raise EmsegError("--into-input writes into one input image; in folder mode pass --out OUTDIR")
    files = folder_inputs(inputs) if isinstance(inputs, (str, Path)) else list(inputs)
    files = [Path(inputs)] if files is None else files
    out_dir = Path(out_dir)
    pairs = plan_outputs(files, out_dir, part)
    report_path = choices.pop("report", None)
    overwrite = bool(choices.pop("overwrite", False))
    choices.pop("resume", None)
    if not pairs:
        return []
    first = SegmentRequest.from_keywords(pairs[0][0], pairs[0][1], say=say, **choices)  # options checked once
    out_dir.mkdir(exist_ok=True)
    backend = _SharedBackend(first, say)
    try:
        outcomes = [_one_file(first, backend, pair, overwrite, (i, len(pairs)), say)
                    for i, pair in enumerate(pairs, 1)]
    finally:
        backend.close()
    if report_path is not None:
        Path(report_path).write_text(json.dumps([o.to_dict() for o in outcomes], indent=2))
    return outcomes


def _say(say: Say | None) -> Say:
    return say if say is not None else (lambda message: None)


class _SharedBackend:
    """The one backend of a folder run, loaded when the first file needs it (a rerun that keeps every output
    loads none); with --dask the backend name, which the workers load."""

    def __init__(self, first: SegmentRequest, say: Say | None) -> None:
        self.first, self.say = first, say
        self.loaded: tuple[Any, bool, str] | None = None

    def get(self) -> tuple[Any, str]:
        """(backend or backend name, device) for a file's request."""
        if self.loaded is None:
            first = self.first
            self.loaded = (first.backend, False, first.device) if first.dask else open_backend(first, _say(self.say))
        return self.loaded[0], self.loaded[2]

    def close(self) -> None:
        if self.loaded is not None and self.loaded[1]:
            self.loaded[0].close()


def _one_file(first: SegmentRequest, backend: _SharedBackend, pair: tuple[Path, Path], overwrite: bool,
              count: tuple[int, int], say: Say | None) -> FileOutcome:
    """Segment one input of a folder run (or keep its complete output); an EmsegError becomes a failed outcome."""
    source, output = pair
    head = f"[{count[0]}/{count[1]}] {source}"
    if not overwrite and is_complete(output):
        _say(say)(f"{head}: {output} is complete already; kept")
        return FileOutcome(source, output, "complete")
    try:
        engine, device = backend.get()
        request = replace(first, input=source, output=output, backend=engine, device=device,
                          options=replace(first.options, resume=not overwrite, overwrite=overwrite))
        rep = run_segment(request)
    except EmsegError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _say(say)(f"{head}: failed: {message}")
        return FileOutcome(source, output, "failed", message)
    if not rep.complete:
        _say(say)(f"{head}: {output} is not complete; run again to resume it")
        return FileOutcome(source, output, "failed", "output not complete; run again to resume it", rep)
    planes = f"{rep.slices_computed} plane" + ("" if rep.slices_computed == 1 else "s")
    _say(say)(f"{head} → {output}: {planes} in {rep.wall_seconds:.1f} s")
    return FileOutcome(source, output, "segmented", report=rep)


def summary_line(outcomes: Sequence[FileOutcome]) -> str:
    """'N segmented, M already complete, K failed' for a folder run."""
    counts = {status: sum(o.status == status for o in outcomes) for status in ("segmented", "complete", "failed")}
    return f"{counts['segmented']} segmented, {counts['complete']} already complete, {counts['failed']} failed"
