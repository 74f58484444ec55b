"""docs/napari-widget.png: napari with the "Segment organelles" widget docked, after a run on the sample phantom.

    xvfb-run -a python scripts/napari_screenshot.py [--out docs/napari-widget.png]

Needs a display (a desktop, or Xvfb as above: no window appears anywhere) and `pip install 'emseg-rt[napari]'`.
It opens the sample (File > Open Sample > emseg-rt > Beta-cell phantom), docks the widget from the plugin's
manifest, clicks Run with the widget's defaults (the embedded default model, backend and device `auto`), waits for
the worker, and saves `viewer.screenshot(canvas_only=False)`: the whole window, widget included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import napari
from PIL import Image
from qtpy.QtWidgets import QApplication

from emseg_rt.napari.widget import TITLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "napari-widget.png")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        sys.exit("no display: run it as `xvfb-run -a python scripts/napari_screenshot.py`")
    viewer = napari.Viewer(title="napari: emseg-rt")
    viewer.window.resize(1500, 900)
    viewer.open_sample("emseg-rt", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("emseg-rt", TITLE)
    widget.run_button.native.click()
    app, deadline = QApplication.instance(), time.monotonic() + args.timeout
    while widget.worker is not None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    if widget.worker is not None or not widget.status.value.startswith("added"):
        sys.exit(f"the run did not finish: {widget.status.value!r}")
    viewer.dims.set_current_step(0, viewer.layers["phantom"].data.shape[0] // 2)
    for _ in range(20):  # let the canvas draw the new slice
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(args.out, optimize=True)
    print(f"wrote {args.out} ({widget.status.value})")
    viewer.close()


if __name__ == "__main__":
    main()
