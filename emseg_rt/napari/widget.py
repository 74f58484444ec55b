"""The "Segment organelles" dock widget: image layer, model, backend, device, instances, OME-Zarr output; Run and
Cancel; a progress bar; Labels layers with class names (features) and the OME-Zarr label colours.

The run (`run.segment_image`) goes on a napari thread worker. The one progress reporter calls the worker's
listener after every block (`SegmentRequest.on_progress`); the listener hands the count to the progress bar
through a Qt signal (queued onto the GUI thread) and, once Cancel was pressed, raises `RunCancelled`, which stops
the run before its next block. Layers are added only when a run finishes: a cancelled or failed run adds none.
Every error reaches the user as one notification line (`show_error`), never a traceback dialog: the worker
catches it and hands back its first line.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import thread_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from emseg_rt.errors import EmsegError
from emseg_rt.io.label_images import INSTANCE_SUFFIX
from emseg_rt.models.catalogue import CONFIGS, DEFAULT_MODEL
from emseg_rt.napari.run import (RunCancelled, Segmentation, WidgetChoices, class_colours, class_features,
                                 image_data, segment_image)
from emseg_rt.runtime import BACKENDS

TITLE = "Segment organelles"
DEVICES = ("auto", "cpu", "cuda")
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a worker hands back: the segmentation, or the one-line error, or that it was cancelled."""

    segmentation: Segmentation | None = None
    error: str | None = None
    cancelled: bool = False


class _Relay(QObject):
    """Signals the worker thread emits and the GUI thread receives (queued across threads)."""

    progressed = Signal(int, int)  # planes done, planes in all (-1: not known yet)
    said = Signal(str)


@thread_worker
def _segment_in_worker(data: Any, choices: WidgetChoices, relay: _Relay, cancel: threading.Event) -> Outcome:
    """One run on a worker thread; every exception becomes an Outcome, so none reaches napari's error dialog."""
    def listen(done: int, total: int | None) -> None:
        if cancel.is_set():
            raise RunCancelled
        relay.progressed.emit(done, -1 if total is None else total)

    try:
        return Outcome(segment_image(data, choices, listen, relay.said.emit))
    except RunCancelled:
        return Outcome(cancelled=True)
    except EmsegError as exc:
        return Outcome(error=_first_line(exc))
    except Exception as exc:  # a bug: one line here, the traceback in the log
        log.exception("%s failed", TITLE)
        return Outcome(error=f"{type(exc).__name__}: {_first_line(exc)}")


def _given(path: Path | None) -> Path | None:
    """A path field's value, None when left empty (magicgui gives None, or '.' for an emptied field)."""
    return None if path is None or path == Path(".") else path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class SegmentWidget(Container):
    """The dock widget. `worker` is the running thread worker (None when idle)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.model = ComboBox(label="model", choices=[DEFAULT_MODEL, *(n for n in CONFIGS if n != DEFAULT_MODEL)],
                              value=DEFAULT_MODEL, tooltip="registry model (`emseg-rt models`)")
        self.package = FileEdit(label="or package", mode="d", nullable=True,
                                tooltip="a model package directory (`emseg-rt export`): used instead of the model")
        self.bioimageio = FileEdit(label="or bioimage.io", mode="r", filter="*.zip", nullable=True,
                                   tooltip="a bioimage.io package (`emseg-rt export --bioimageio`): used instead of "
                                   "the model")
        self.backend = ComboBox(label="backend", choices=list(BACKENDS), value="auto")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.instances = CheckBox(text="instances (one layer per class)", value=False)
        self.output = FileEdit(label="OME-Zarr out", mode="w", filter="*.zarr", nullable=True,
                               tooltip="also write the label image here (a new directory); empty: keep it in memory")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.model, self.package, self.bioimageio, self.backend, self.device,
                                  self.instances,
                                  self.output, self.run_button, self.cancel_button, self.progress, self.status])
        self.worker: Any = None
        self._started = 0.0
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._relay.said.connect(self._on_say)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self.reset_choices)
        self.reset_choices()

    def _image_layers(self, _: Any = None) -> list[tuple[str, napari.layers.Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def choices(self) -> WidgetChoices:
        """The widget's current choices."""
        package, output = _given(self.bioimageio.value) or _given(self.package.value), _given(self.output.value)
        return WidgetChoices(model=str(package) if package is not None else self.model.value,
                             backend=self.backend.value, device=self.device.value, instances=self.instances.value,
                             output=output)

    def start(self) -> None:
        """Run: check the image layer, then segment it on a thread worker."""
        if self.worker is not None:
            return
        layer = self.image.value
        try:
            if layer is None:
                raise EmsegError("no image layer to segment: open an image, or File > Open Sample > emseg-rt")
            data = image_data(layer.name, layer.data, layer.rgb, layer.multiscale)
        except EmsegError as exc:
            show_error(f"{TITLE}: {_first_line(exc)}")
            return
        self._cancel.clear()
        self._set_running(True, f"segmenting {layer.name}...")
        self._started = time.perf_counter()
        worker = _segment_in_worker(data, self.choices(), self._relay, self._cancel)
        worker.returned.connect(lambda outcome: self._finish(outcome, layer))
        worker.finished.connect(lambda: self._set_running(False))
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Cancel: the run stops before its next block and adds no layer."""
        if self.worker is not None:
            self._cancel.set()
            self.status.value = "cancelling after this block..."

    def _set_running(self, running: bool, status: str | None = None) -> None:
        self.run_button.enabled, self.cancel_button.enabled = not running, running
        if running:
            self.progress.value, self.progress.max = 0, 1
        else:
            self.worker = None
        if status is not None:
            self.status.value = status

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.max, self.progress.value = total, done

    def _on_say(self, line: str) -> None:
        self.status.value = line

    def _finish(self, outcome: Outcome, layer: napari.layers.Image) -> None:
        if outcome.error is not None:
            self.status.value = "failed"
            show_error(f"{TITLE}: {outcome.error}")
        elif outcome.cancelled:
            self.status.value = "cancelled: no layer added"
            show_info(f"{TITLE}: cancelled; no layer added")
        elif outcome.segmentation is not None:
            added = add_label_layers(self.viewer, outcome.segmentation, layer)
            seconds = time.perf_counter() - self._started
            self.status.value = f"added {', '.join(added)} in {seconds:.1f} s"


def add_label_layers(viewer: napari.viewer.Viewer, result: Segmentation, image: napari.layers.Image) -> list[str]:
    """Add the semantic Labels layer (class names as features, the OME-Zarr label colours) and one per class's
    instances, at the image layer's scale and translate; returns their names."""
    where = {"scale": image.scale, "translate": image.translate}
    name = f"{image.name} organelles"
    viewer.add_labels(result.labels, name=name, features=class_features(result.classes),
                      colormap=DirectLabelColormap(color_dict=class_colours(result.classes)), **where)
    names = [name]
    for class_name, ids in result.instances.items():
        names.append(f"{image.name} {class_name}{INSTANCE_SUFFIX}")
        viewer.add_labels(ids, name=names[-1], **where)
    return names
