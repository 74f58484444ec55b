"""The napari plugin end to end: a real viewer (pytest-qt's `make_napari_viewer`), the dock widget napari loads from
the npe2 manifest, Run clicked and the worker waited for; the layers checked against `segment_labels` on the same
array and against the OME-Zarr label image the run wrote. Cancel mid-run adds no layer; bad input is one
notification line.

Where it draws: napari needs a working OpenGL context to add any layer. Qt's `offscreen` platform has none that
napari's canvas can use (QOpenGLWidget is "not supported on this platform" there, and adding a layer then fails
or not, by chance), so without $DISPLAY this module starts Xvfb on a free display and runs Qt's `xcb` platform on
it: a virtual screen, no window anywhere (the viewers are not shown). It skips, saying what to install, without
Xvfb (`apt-get install xvfb`) or when Qt's xcb platform cannot start (`apt-get install libxcb-icccm4
libxcb-keysyms1`, the two libraries PyQt6's wheel needs beyond this machine's image).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import zarr  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from emseg_rt.data.phantom import CLASS_NAMES, generate_phantom  # noqa: E402
from emseg_rt.errors import EmsegError  # noqa: E402
from emseg_rt.io.label_images import instance_images, open_label_image  # noqa: E402
from emseg_rt.napari import sample  # noqa: E402
from emseg_rt.napari.widget import TITLE, SegmentWidget  # noqa: E402
from emseg_rt.runtime import segment_labels  # noqa: E402

RUN_TIMEOUT_MS = 120_000  # a loaded 2-core machine; a run here takes about a second
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session", autouse=True)
def _display_with_gl():
    """An X display for napari's OpenGL: $DISPLAY as it is, else Xvfb started here with QT_QPA_PLATFORM=xcb."""
    if os.environ.get("DISPLAY"):
        yield
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("napari needs OpenGL, which Qt gets only from an X display here: install Xvfb (apt-get install "
                    "xvfb) or set DISPLAY")
    number = _start_xvfb(xvfb)
    if number is None:
        pytest.skip("Xvfb did not start, so napari has no OpenGL here")
    env = {**os.environ, "DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
                           env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:  # in this process Qt would abort pytest itself
        pytest.skip("Qt's xcb platform does not start on Xvfb (apt-get install libxcb-icccm4 libxcb-keysyms1): "
                    + (probe.stderr.strip().splitlines() or ["no message"])[-1])
    os.environ.update(DISPLAY=env["DISPLAY"], QT_QPA_PLATFORM="xcb")
    yield


# Xvfb on display :$1 while process $2 (this one) lives: stopped only after this process exits, because Xlib
# exits with status 1 when the display it is connected to goes away first.
XVFB_WATCH = ('"$0" ":$1" -screen 0 1280x1024x24 -nolisten tcp >/dev/null 2>&1 & server=$!; '
              'while kill -0 "$2" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 1; done; kill "$server"')


_XVFB_WATCHES: list[subprocess.Popen] = []


def _start_xvfb(xvfb: str) -> int | None:
    """The first free display from :99 (as xvfb-run picks one) with Xvfb listening on it; None if it fails."""
    for number in range(99, 199):
        socket = Path(f"/tmp/.X11-unix/X{number}")
        if Path(f"/tmp/.X{number}-lock").exists() or socket.exists():
            continue
        watch = subprocess.Popen(["sh", "-c", XVFB_WATCH, xvfb, str(number), str(os.getpid())],
                                 start_new_session=True)
        deadline = time.monotonic() + 30
        while watch.poll() is None and not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if watch.poll() is None and socket.exists():
            _XVFB_WATCHES.append(watch)  # held until this process exits (no ResourceWarning for a running child)
            return number
    return None


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A 16×64×64 phantom (two blocks of 8 planes): nucleus, mitochondria and granules in it."""
    return generate_phantom((16, 64, 64), seed=5).image


@pytest.fixture
def errors():
    """The error notifications napari shows during the test, as their messages."""
    seen: list[str] = []

    def keep(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(notification.message)

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def docked_widget(viewer) -> SegmentWidget:
    """The widget as napari's Plugins menu docks it (from the npe2 manifest), set to torch on the CPU."""
    _, widget = viewer.window.add_plugin_dock_widget("emseg-rt", TITLE)
    assert isinstance(widget, SegmentWidget)
    widget.backend.value, widget.device.value = "torch", "cpu"
    return widget


def run_and_wait(qtbot, widget: SegmentWidget) -> None:
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)


def test_run_adds_the_labels_segment_labels_gives(make_napari_viewer, qtbot, volume, errors):
    viewer = make_napari_viewer()
    image = viewer.add_image(volume, name="cell", scale=(2.0, 0.5, 0.5), translate=(10.0, 4.0, -3.0))
    widget = docked_widget(viewer)
    assert widget.image.value is image
    run_and_wait(qtbot, widget)
    assert errors == []
    assert [layer.name for layer in viewer.layers] == ["cell", "cell organelles"]
    labels = viewer.layers["cell organelles"]
    expected = segment_labels(volume, backend="torch")
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(labels.data, expected)
    assert list(labels.features["class"]) == ["background", *CLASS_NAMES]
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.translate, image.translate)
    assert (widget.progress.value, widget.progress.max) == (16, 16)  # every plane, block by block


def test_output_and_instances_match_the_ome_zarr_written(make_napari_viewer, qtbot, volume, errors, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(volume[:8], name="cell")
    widget = docked_widget(viewer)
    widget.instances.value = True
    widget.output.value = tmp_path / "cell-seg.zarr"
    run_and_wait(qtbot, widget)
    assert errors == []
    labels = viewer.layers["cell organelles"]
    np.testing.assert_array_equal(labels.data, segment_labels(volume[:8], backend="torch"))
    written = open_label_image(tmp_path / "cell-seg.zarr", role="prediction")  # complete, else EmsegError
    np.testing.assert_array_equal(written.read(), labels.data)
    image_label = zarr.open_group(tmp_path / "cell-seg.zarr", mode="r").attrs["ome"]["image-label"]
    for entry in image_label["colors"]:  # the layer shows each class in the colour the label image gives it
        rgba = np.asarray(labels.colormap.map(entry["label-value"])).ravel() * 255
        np.testing.assert_allclose(rgba, entry["rgba"], atol=0.5)
    assert written.class_names == dict(zip(labels.features["index"][1:], labels.features["class"][1:]))
    written_instances = instance_images(written)
    assert sorted(written_instances) == sorted(CLASS_NAMES)
    for class_name in CLASS_NAMES:  # each class's instances as `segment --instances` wrote them
        ids = viewer.layers[f"cell {class_name}_instances"].data
        assert ids.dtype == np.uint32
        np.testing.assert_array_equal(ids, written_instances[class_name].read())
    assert viewer.layers["cell granules_instances"].data.max() > 1  # several granules in the crop


def test_cancel_mid_run_adds_no_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(generate_phantom((64, 64, 64), seed=6).image, name="cell")  # 8 blocks
    widget = docked_widget(viewer)
    widget.output.value = tmp_path / "cell-seg.zarr"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=RUN_TIMEOUT_MS)  # the first block is done
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["cell"]
    assert widget.status.value.startswith("cancelled")
    assert 0 < widget.progress.value < 64
    with pytest.raises(EmsegError, match="unfinished"):  # the output does not claim to be complete
        open_label_image(tmp_path / "cell-seg.zarr", role="prediction")
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_bad_input_is_one_notification_line(make_napari_viewer, qtbot, volume, errors, tmp_path):
    viewer = make_napari_viewer()
    widget = docked_widget(viewer)
    widget.run_button.native.click()  # no image layer
    assert widget.worker is None
    viewer.add_image(volume[:4], name="cell")
    widget.package.value = tmp_path / "no-such-package"
    run_and_wait(qtbot, widget)
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    widget.bioimageio.value = tmp_path / "broken.zip"  # the bioimage.io field goes before the package field
    run_and_wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["cell"]
    assert len(errors) == 3 and all("\n" not in message for message in errors), errors
    assert "no image layer" in errors[0]
    assert "no-such-package does not exist" in errors[1]
    assert "broken.zip" in errors[2]


def test_the_sample_is_the_phantom_with_its_ground_truth(make_napari_viewer, monkeypatch):
    monkeypatch.setattr(sample, "SAMPLE_SHAPE", (8, 64, 64))  # (32, 256, 256) for users: 3 s to make
    viewer = make_napari_viewer()
    viewer.open_sample("emseg-rt", "phantom")  # File > Open Sample > emseg-rt, from the npe2 manifest
    image, truth = viewer.layers
    phantom = generate_phantom((8, 64, 64), seed=sample.SAMPLE_SEED)
    np.testing.assert_array_equal(image.data, phantom.image)
    np.testing.assert_array_equal(truth.data, phantom.labels)
    assert set(np.unique(truth.data)) == {0, 1, 2, 3}
    assert list(truth.features["class"]) == ["background", *CLASS_NAMES]
