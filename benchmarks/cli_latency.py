#!/usr/bin/env python3
"""How long the CLI takes to answer: wall time of the installed `emseg-rt` console script, fresh process each run.

Measured (median of --runs runs, the commands taken round-robin so that a busy spell of a shared machine falls
on all of them alike): `--help`, `--version`, `models`, a segment of a path that does not exist (the one-line
error, exit 2) and `segment --help`; `python -c pass` as the floor any Python command pays. Each run of a label
(`--label before` on the old code, `--label after` on the new) is kept beside the others in
benchmarks/results/cli_latency.json, and the markdown shows them side by side.

On a shared machine the load moves between two runs; `--baseline-tree` times another copy of the package (the old
code, run as `python -c 'from emseg_rt.cli import main; main()'` from that tree) in the same round-robin, so that
both sides see the same load:

    git archive HEAD emseg_rt | tar -x -C /tmp/emseg-head     # the committed code, beside the working tree
    python benchmarks/cli_latency.py --label after --runs 7 --baseline-tree /tmp/emseg-head
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emseg_rt.bench.machine import machine_record
from emseg_rt.runtime.devices import cpu_flags

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_SECONDS = 1.0  # issue 25: --help, --version, models and a bad-path error each under a second
CPU_FLAGS = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")


def console_script() -> str:
    """The venv's installed `emseg-rt` (beside this interpreter), as a user runs it."""
    script = Path(sys.executable).parent / "emseg-rt"
    if not script.is_file():
        raise SystemExit(f"{script} not found: install emseg-rt into this environment (pip install -e .)")
    return str(script)


def tree_launcher(tree: Path) -> list[str]:
    """argv prefix that runs the CLI of the emseg_rt package under `tree` (not the installed one)."""
    boot = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from emseg_rt.cli import main; "
            "sys.argv[0] = 'emseg-rt'; main()")
    return [sys.executable, "-c", boot, str(tree)]


def commands(launcher: list[str], scratch: Path, floor: bool = True) -> dict[str, tuple[list[str], int]]:
    """Name → (argv, the exit code it must end with), the CLI started by `launcher`."""
    todo = {"python -c pass (floor)": ([sys.executable, "-c", "pass"], 0)} if floor else {}
    return todo | {
        "emseg-rt --help": ([*launcher, "--help"], 0),
        "emseg-rt --version": ([*launcher, "--version"], 0),
        "emseg-rt models": ([*launcher, "models"], 0),
        "emseg-rt segment /nonexistent.zarr (error)": (
            [*launcher, "segment", "/nonexistent.zarr", "--out", str(scratch / "x.zarr")], 2),
        "emseg-rt segment --help": ([*launcher, "segment", "--help"], 0),
    }


def time_once(argv: list[str], expected: int) -> tuple[float, str]:
    """Wall seconds of one fresh process; its stderr's first line (the error a user sees)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, expected {expected}\n{done.stderr[-2000:]}")
    return seconds, (done.stderr.strip().splitlines() or [""])[0]


def measure(launchers: dict[str, list[str]], runs: int) -> dict[str, dict[str, dict[str, object]]]:
    """Every command of every launcher (label → argv prefix) `runs` times, round-robin over all of them; per label
    and command the median, min, max and every run."""
    with tempfile.TemporaryDirectory() as tmp:
        todo = {(label, name): spec for i, (label, launcher) in enumerate(launchers.items())
                for name, spec in commands(launcher, Path(tmp), floor=i == 0).items()}
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in todo}
        stderr: dict[tuple[str, str], str] = {}
        for _ in range(runs):
            for key, (argv, expected) in todo.items():
                wall, stderr[key] = time_once(argv, expected)
                seconds[key].append(round(wall, 4))
    results: dict[str, dict[str, dict[str, object]]] = {label: {} for label in launchers}
    for (label, name), walls in seconds.items():
        results[label][name] = {"argv": [Path(todo[label, name][0][0]).name, *todo[label, name][0][1:]],
                                "exit_code": todo[label, name][1], "median_s": round(statistics.median(walls), 4),
                                "min_s": min(walls), "max_s": max(walls), "runs_s": walls,
                                "stderr_first_line": stderr[label, name]}
    return results


def git_state() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def records(launchers: dict[str, list[str]], sources: dict[str, str], runs: int) -> dict[str, dict[str, object]]:
    """Label → its record (machine, load, code measured, commands), all labels measured in one round-robin."""
    machine = machine_record("cpu")
    machine.update({"python": platform.python_version(), "cpu_flags": cpu_flags(CPU_FLAGS),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]})
    results = measure(launchers, runs)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {label: {"date": date, "git": git_state(), "code": sources[label], "runs_per_command": runs,
                    "same_run_as": [other for other in launchers if other != label], "machine": machine,
                    "commands": results[label]} for label in launchers}


def markdown(labels: dict[str, dict]) -> str:
    """One table, one column per label (in the order first recorded), and the machine of each."""
    names = list(next(iter(labels.values()))["commands"])
    pairs = [(label, entry["same_run_as"][0]) for label, entry in labels.items()
             if entry.get("same_run_as") and entry["same_run_as"][0] in labels][:1]  # (new, old) timed together
    header = "| command | " + " | ".join(f"{label}: median s (min–max)" for label in labels) + "".join(
        f" | {old} / {new} (same run)" for new, old in pairs) + " |"
    lines = ["# CLI latency (`benchmarks/cli_latency.py`)", "",
             "Wall time of the installed `emseg-rt` console script, a fresh process per run, median of the runs "
             f"(commands round-robin). Target (issue 25): `--help`, `--version`, `models` and a bad-path error "
             f"each under {TARGET_SECONDS:g} s.", "", header, "|---|" + "---|" * (len(labels) + len(pairs))]
    for name in names:
        cells = []
        for entry in labels.values():
            c = entry["commands"].get(name)
            cells.append("—" if c is None else f"{c['median_s']:.2f} ({c['min_s']:.2f}–{c['max_s']:.2f})")
        for new, old in pairs:
            a, b = labels[new]["commands"].get(name), labels[old]["commands"].get(name)
            cells.append(f"{b['median_s'] / a['median_s']:.1f}×" if a and b else "—")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")
    for label, entry in labels.items():
        m = entry["machine"]
        flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in m["cpu_flags"].items())
        git, code = entry["git"], entry.get("code", "the installed console script (the working tree)")
        together = f"; timed in the same round-robin as {', '.join(entry['same_run_as'])}" if entry.get(
            "same_run_as") else ""
        lines.append(f"- **{label}** ({entry['date']}, {code}; repository at {git['commit']}"
                     f"{' + uncommitted changes' if git['dirty'] else ''}, {entry['runs_per_command']} runs each"
                     f"{together}): {m['cpu']}, {m['cpu_cores']} cores ({flags}); "
                     f"Python {m['python']}, torch {m['libraries'].get('torch')}; load average "
                     f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end.")
    error = next(iter(labels.values()))["commands"].get("emseg-rt segment /nonexistent.zarr (error)")
    if error:
        lines += ["", f"The bad-path error a user sees: `{error['stderr_first_line']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="Name of this measurement (e.g. before, after); a label "
                        "already in the JSON is replaced, the others are kept.")
    parser.add_argument("--runs", type=int, default=7, help="Runs per command (median reported).")
    parser.add_argument("--out", type=Path, default=RESULTS / "cli_latency", help="Results path without suffix.")
    parser.add_argument("--baseline-tree", type=Path, help="Also time the CLI of the emseg_rt package under this "
                        "folder (e.g. the committed code, unpacked with git archive), in the same round-robin.")
    parser.add_argument("--baseline-label", default="before, same run", help="Label of the --baseline-tree times.")
    args = parser.parse_args()
    launchers = {args.label: [console_script()]}
    sources = {args.label: "the installed console script (the working tree)"}
    if args.baseline_tree is not None:
        if not (args.baseline_tree / "emseg_rt" / "cli" / "__init__.py").is_file():
            raise SystemExit(f"--baseline-tree {args.baseline_tree}: no emseg_rt/cli package under it")
        launchers[args.baseline_label] = tree_launcher(args.baseline_tree.resolve())
        sources[args.baseline_label] = f"`python -c 'from emseg_rt.cli import main; main()'` on {args.baseline_tree}"
    path = args.out.with_suffix(".json")
    saved = json.loads(path.read_text()) if path.exists() else {"benchmark": "cli_latency", "labels": {}}
    saved["labels"].update(records(launchers, sources, args.runs))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(saved["labels"]))
    print(markdown(saved["labels"]))


if __name__ == "__main__":
    main()
