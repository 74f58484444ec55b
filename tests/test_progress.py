"""`Progress`: plain progress lines for batch-job logs, timed with a fake clock (no sleeping)."""

from __future__ import annotations

from emseg_rt.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_log(total: int | None, done: int = 0, voxels_per_plane: int | None = None,
             **kwargs) -> tuple[Progress, list[str], FakeClock]:
    lines: list[str] = []
    clock = FakeClock()
    per_unit = None if voxels_per_plane is None else (voxels_per_plane / 1e6, "Mvox")
    return Progress("segment", total, done=done, say=lines.append, clock=clock, per_unit=per_unit, tty=False,
                    **kwargs), lines, clock


def test_no_line_before_the_interval_then_one_line():
    log, lines, clock = make_log(1000, interval=10.0, voxels_per_plane=512 * 512)
    for _ in range(9):
        clock.now += 1.0
        log.advance(10)
    assert lines == []  # 9 s < 10 s
    clock.now += 1.0
    log.advance(10)
    assert lines == ["segment: 100/1000 slices (10.0%), 10.00 slices/s, 2.62 Mvox/s, ETA 1m30s"]
    clock.now += 5.0
    log.advance(50)
    assert len(lines) == 1  # 5 s after the last line
    clock.now += 5.0
    log.advance(50)
    assert lines[-1] == "segment: 200/1000 slices (20.0%), 10.00 slices/s, 2.62 Mvox/s, ETA 1m20s"


def test_example_line_and_at_most_one_line_per_update():
    log, lines, clock = make_log(1000, voxels_per_plane=261_000)
    clock.now += 35.19
    log.advance(120)  # one line although 3 intervals passed
    assert lines == ["segment: 120/1000 slices (12.0%), 3.41 slices/s, 0.89 Mvox/s, ETA 4m18s"]


def test_resumed_run_rates_count_only_this_runs_planes():
    log, lines, clock = make_log(1000, done=600, interval=10.0)
    clock.now += 20.0
    log.advance(40)
    # 40 planes in 20 s → 2 slices/s; 360 left → 3 min. No Mvox/s without voxels_per_plane.
    assert lines == ["segment: 640/1000 slices (64.0%), 2.00 slices/s, ETA 3m00s"]


def test_finish_line_uses_this_runs_time():
    log, lines, clock = make_log(1000, done=100, interval=1e9)
    for _ in range(9):
        clock.now += 33.5
        log.advance(100)
    clock.now += 0.5
    log.close()
    assert lines == ["segment: 1000/1000 slices in 5m02s"]


def test_format_duration():
    assert [format_duration(s) for s in (0, 0.4, 42, 59.6, 258, 302, 3600, 3902, -5)] == [
        "0s", "0s", "42s", "1m00s", "4m18s", "5m02s", "1h00m00s", "1h05m02s", "0s"]


def test_job_status_unknown_total_and_quiet():
    log, lines, clock = make_log(None, interval=1.0)
    clock.now += 2.0
    log.advance(3, status="loss 0.250")
    assert lines == ["segment: 3 slices; loss 0.250"]
    log.update(10, total=20)
    clock.now += 2.0
    log.advance(2)
    assert lines[-1] == "segment: 12/20 slices (60.0%), 3.00 slices/s, ETA 3s; loss 0.250"
    quiet, quiet_lines, clock = make_log(10, enabled=False)
    clock.now += 100.0
    quiet.advance(5)
    quiet.close()
    assert quiet_lines == []


def test_a_failed_job_says_no_final_line():
    lines: list[str] = []
    try:
        with Progress("train", 10, unit="steps", say=lines.append, tty=False, interval=1e9) as progress:
            progress.advance(1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert lines == []
