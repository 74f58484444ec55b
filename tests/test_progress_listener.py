"""The progress listener (`Progress(listener=)`, `SegmentRequest.on_progress`): what a GUI's progress bar and Cancel
hang on (the napari widget). It hears every block of `segment_labels` and `run_segment`; an exception it raises
stops the run before the next block, and an output stopped so never claims to be complete."""

from __future__ import annotations

import numpy as np
import pytest

from emseg_rt.errors import EmsegError
from emseg_rt.io.label_images import open_label_image
from emseg_rt.progress import Progress
from emseg_rt.runtime import SegmentRequest, run_segment, segment_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Stop(Exception):
    """What a Cancel raises from the listener."""


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, size=(20, 48, 48), dtype=np.uint8)


def test_the_listener_hears_every_update_quiet_or_not():
    heard = []
    with Progress("job", total=5, enabled=False, listener=lambda done, total: heard.append((done, total))) as job:
        job.advance(2)
        job.update(5)
    assert heard == [(2, 5), (5, 5)]


def test_segment_labels_reports_each_block_and_a_raising_listener_stops_it(engine, volume):
    heard = []
    labels = segment_labels(volume, backend=engine, block=8, on_progress=lambda d, t: heard.append((d, t)))
    assert heard == [(8, 20), (16, 20), (20, 20)]
    np.testing.assert_array_equal(labels, segment_labels(volume, backend=engine, block=8))

    def cancel_after_the_first_block(done: int, total: int | None) -> None:
        heard.append((done, total))
        raise Stop

    heard.clear()
    with pytest.raises(Stop):
        segment_labels(volume, backend=engine, block=8, on_progress=cancel_after_the_first_block)
    assert heard == [(8, 20)]


def test_a_written_run_stopped_by_its_listener_is_left_unfinished(engine, volume, tmp_path):
    def cancel(done: int, total: int | None) -> None:
        raise Stop

    request = SegmentRequest.from_keywords(volume, tmp_path / "out.zarr", backend=engine, device="cpu", block=4,
                                           on_progress=cancel)
    with pytest.raises(Stop):
        run_segment(request)
    with pytest.raises(EmsegError, match="unfinished"):
        open_label_image(tmp_path / "out.zarr", role="prediction")
