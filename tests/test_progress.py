"""`Progress`: plain progress lines for batch-job logs, timed with a fake clock (no sleeping, except the
heartbeat's tests: a real thread at a 20 ms interval)."""

from __future__ import annotations

import gc
import time

from emseg_rt.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_log(total: int | None, done: int = 0, voxels_per_plane: int | None = None, label: str = "segment",
             **kwargs) -> tuple[Progress, list[str], FakeClock]:
    """A reporter writing log lines into a list, on a fake clock; no estimate line unless asked for."""
    lines: list[str] = []
    clock = FakeClock()
    per_unit = None if voxels_per_plane is None else (voxels_per_plane / 1e6, "Mvox")
    kwargs.setdefault("estimate", False)
    return Progress(label, total, done=done, say=lines.append, clock=clock, per_unit=per_unit, tty=False,
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
    assert lines == ["segment: 3 slices, 2s so far; loss 0.250"]
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


def test_the_estimate_is_said_once_after_the_first_units():
    """pretrain's default is hours on a CPU: the log says so after the first epochs, at the measured rate."""
    log, lines, clock = make_log(2800, label="pretraining", unit="epochs", interval=1e9, estimate=True)
    for _ in range(2):
        clock.now += 12.8
        log.advance(1)
    assert lines == []  # two epochs are too few to go on
    clock.now += 12.8
    log.advance(1)
    # 3 epochs in 38.4 s; 2797 left × 12.8 s = 35801.6 s
    assert lines == ["pretraining: about 9h56m42s for the 2797 epochs left (12.80 s/epoch over the first 3 epochs)"]
    for _ in range(10):
        clock.now += 12.8
        log.advance(1)
    assert len(lines) == 1


def test_the_estimate_after_one_long_unit_and_only_for_this_runs_units():
    log, lines, clock = make_log(100, done=40, label="bench", unit="measurements", interval=10.0, estimate=True)
    clock.now += 90.0
    log.advance(1)  # one unit, but the interval has passed: estimate from it (59 left × 90 s = 5310 s)
    assert lines[0] == ("bench: about 1h28m30s for the 59 measurements left (90.00 s/measurement over the first "
                        "1 measurement)")


def test_no_estimate_for_a_job_that_ends_within_a_minute():
    log, lines, clock = make_log(20, label="training", unit="steps", interval=1e9, estimate=True)
    for _ in range(19):
        clock.now += 1.0
        log.advance(1)
    assert lines == []  # 17 steps left at 1 step/s when the estimate was due: under a minute


def test_the_estimate_appears_above_the_bar_on_a_terminal(capsys):
    clock = FakeClock()
    with Progress("training", 1000, unit="steps", clock=clock, tty=True) as progress:
        clock.now += 3.0
        progress.advance(3)
    err = capsys.readouterr().err
    assert "training: about 16m37s for the 997 steps left (1.00 steps/s over the first 3 steps)" in err


def test_steps_are_said_as_they_start_and_counted_when_done():
    log, lines, clock = make_log(None, label="export", unit="steps", interval=1e9)
    log.step("exporting full (fp32 trace)")
    clock.now += 42.0
    log.step("measuring parity with ONNX Runtime")
    clock.now += 18.0
    log.close()
    assert lines == ["export: 0 steps, 0s so far; exporting full (fp32 trace)",
                     "export: 1 steps, 42s so far; measuring parity with ONNX Runtime",
                     "export: 2 steps in 1m00s; measuring parity with ONNX Runtime"]


def test_the_heartbeat_speaks_inside_one_long_unit_and_stops_at_close():
    lines: list[str] = []
    with Progress("bench", 4, unit="measurements", say=lines.append, tty=False, interval=0.02) as progress:
        progress.update(0, status="scsam-vit-h · onnxruntime · batch 1")
        time.sleep(0.3)  # one measurement taking many intervals
        beats = len(lines)
    assert beats >= 3 and all(line.startswith("bench: 0/4 measurements (0.0%), 0s so far, ETA unknown; scsam-vit-h")
                              for line in lines[:beats])
    assert lines[-1].startswith("bench: 0/4 measurements in ")  # the final line, then silence
    time.sleep(0.1)
    assert len(lines) == beats + 1


def test_the_heartbeat_ends_with_an_abandoned_reporter():
    """A job that raised before closing its reporter must not keep a thread saying lines."""
    lines: list[str] = []
    progress = Progress("segment", 10, say=lines.append, tty=False, interval=0.02)
    thread = progress._heartbeat.thread
    del progress
    gc.collect()
    thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_bench_says_up_front_how_long_vit_h_takes_and_tiny_nothing():
    """`bench --size vit-h` on a CPU: at least 40 minutes for scsam alone on two backends, said before the first
    measurement (at the matmul rates measured on the 2-core Xeon of the README's CPU table: fp32 245, bf16 60
    GFLOP/s); `--size tiny` is quiet."""
    from emseg_rt.bench.table5 import BenchConfig, bench_estimate, bench_seconds_at_matmul_rates

    rates = {"fp32": 0.245, "bf16": 0.060}
    vit_h = BenchConfig(models=("scsam",), size="vit-h", backends=("torch-eager-fp32", "torch-fp32"), device="cpu")
    measurements, seconds = bench_seconds_at_matmul_rates(vit_h, rates)
    # 6.3 TFLOP per slice, 3 warm-up + 20 timed calls, on 2 backends and twice more in the stage breakdown
    assert measurements == 2 and 2000 < seconds < 3000
    line = bench_estimate(vit_h, rates)
    assert line.startswith("bench: 2 measurements of 23 calls each at vit-h: at least 39m") and "--size tiny" in line
    tiny = BenchConfig(models=("scsam",), size="tiny", backends=("torch-fp32",), device="cpu")
    assert bench_estimate(tiny, rates) is None


def test_pretrain_says_its_schedule_before_the_first_epoch(tmp_path):
    from emseg_rt.data.phantom import generate_phantom
    from emseg_rt.models import build
    from emseg_rt.training.pretrain import pretrain

    lines: list[str] = []
    volume = generate_phantom((4, 64, 64), seed=11).image
    pretrain(build("his4mae-tiny"), [volume], tmp_path / "enc.pt", epochs=1, samples_per_epoch=8, batch=4,
             say=lines.append, quiet=False)
    assert lines[0].startswith("pretraining his4mae-tiny: epochs 1..1 of 1, 8 FOVs each in 2 steps of ≤ 4; the "
                               "time it takes follows the first epochs when it is a minute or more")
    assert lines[-1].startswith("pretraining: 1/1 epochs in ")


def test_a_run_that_stops_early_estimates_to_its_stop():
    """`pretrain --stop-after 100` of a 2800-epoch schedule: the bar counts the schedule, the times this run."""
    log, lines, clock = make_log(2800, label="pretraining", unit="epochs", interval=10.0, estimate=True, stop=100)
    clock.now += 30.0
    log.advance(3)
    assert lines == ["pretraining: about 16m10s for the 97 epochs left (10.00 s/epoch over the first 3 epochs)",
                     "pretraining: 3/2800 epochs (0.1%), 0.10 epochs/s, ETA 16m10s"]


def test_a_quiet_close_leaves_the_final_line_to_a_later_close():
    """`segment` closes its reporter quietly when the loop ends (or fails), then once more to finish."""
    log, lines, clock = make_log(4, interval=1e9)
    clock.now += 2.0
    log.advance(4)
    log.close(said=False)
    assert lines == []
    log.close()
    log.close()
    assert lines == ["segment: 4/4 slices in 2s"]
