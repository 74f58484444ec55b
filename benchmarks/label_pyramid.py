#!/usr/bin/env python3
"""What the label pyramid costs a `segment` run: the final streaming pass that writes s1.. from s0.

A phantom volume is segmented with `segment_volume` (the default model, torch backend, one thread) once with
`levels=1` and once with the default levels for its plane size; the pyramid pass is then timed on its own by
calling the function the run calls (`io.pyramid.write_lower_levels`) on the finished output.

    python benchmarks/label_pyramid.py --shape 8,1024,1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from emseg_rt.bench.machine import machine_record
from emseg_rt.data.phantom import generate_phantom, write_phantom
from emseg_rt.io.pyramid import default_level_count, write_lower_levels
from emseg_rt.runtime import load_backend, segment_volume
from emseg_rt.runtime.output import OutputLayout

RESULTS = Path(__file__).resolve().parent / "results"


def layout_of(out: Path) -> OutputLayout:
    """The layout a finished output was written with (rebuilt from its metadata) for `write_lower_levels`."""
    import zarr

    from emseg_rt.io.pyramid import Level
    from emseg_rt.io.zarr_reader import ome_scale_translation

    group = zarr.open_group(str(out), mode="r")
    ms = dict(group.attrs)["ome"]["multiscales"][0]
    levels = tuple(Level(d["path"], tuple(group[d["path"]].shape), *ome_scale_translation(ms, d, 3))
                   for d in ms["datasets"])
    s0 = group[levels[0].path]
    return OutputLayout(shape=levels[0].shape, chunks=tuple(s0.chunks), classes=(), label_dtype=s0.dtype,
                        label_name="organelles", voxel_size=levels[0].scale, units=(None,) * 3, axes="zyx",
                        probabilities=False, levels=levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,1024,1024")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.set_num_threads(1)
    engine = load_backend(None, "torch")
    with tempfile.TemporaryDirectory() as tmp:
        source = write_phantom(Path(tmp) / "in.zarr", generate_phantom(shape, seed=5))
        walls = {}
        for levels in (1, default_level_count(shape, "zyx")):
            out = Path(tmp) / f"out-{levels}.zarr"
            t0 = time.perf_counter()
            report = segment_volume(source, out, backend=engine, levels=levels)
            walls[levels] = time.perf_counter() - t0
            assert report.complete
        layout = layout_of(out)
        t0 = time.perf_counter()
        write_lower_levels(out, layout.levels, list(range(1, len(layout.levels))))
        pyramid = time.perf_counter() - t0
    record = {"machine": machine_record("cpu"), "shape": list(shape), "levels": len(layout.levels),
              "level_shapes": [list(lvl.shape) for lvl in layout.levels], "model": "scsam-phantom (torch, 1 thread)",
              "wall_seconds_levels_1": round(walls[1], 3),
              f"wall_seconds_levels_{len(layout.levels)}": round(walls[len(layout.levels)], 3),
              "pyramid_pass_seconds": round(pyramid, 3),
              "pyramid_share_of_run": round(pyramid / walls[len(layout.levels)], 4)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label_pyramid.json").write_text(json.dumps(record, indent=2) + "\n")
    cpu = record["machine"].get("cpu", "this machine")
    (RESULTS / "label_pyramid.md").write_text(
        "# Label pyramid cost (`benchmarks/label_pyramid.py`)\n\n"
        f"Machine: {cpu}, {record['machine'].get('cpu_cores', '?')} cores; {record['model']}; phantom {shape}.\n\n"
        "| levels | level shapes | segment wall s | pyramid pass s | pyramid share |\n|---|---|---|---|---|\n"
        f"| 1 | {record['level_shapes'][:1]} | {walls[1]:.1f} | — | — |\n"
        f"| {len(layout.levels)} | {record['level_shapes']} | {walls[len(layout.levels)]:.1f} | {pyramid:.2f} | "
        f"{100 * record['pyramid_share_of_run']:.1f} % |\n")
    json.dump(record, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
