"""README.md's Quickstart and "Using it" commands run as written, in order, with the installed `emseg-rt`.

The commands are read from the fenced code blocks of those two sections (not copied here), run one after the
other in a fresh folder as a user would type them, and the test fails naming the first README command that
failed, with the end of its stderr. What the test changes in a command is the table below, each with its reason:
big models and long defaults become tiny ones, so the whole README runs in about 90 s on two CPU cores (measured
on a 2-core AMD EPYC, a fresh package cache). A substitution that no longer matches any command fails the test
too, so the table cannot go stale. Not run: `NOT_RUN`, and the `--device cuda` (TensorRT) line where there is no
GPU that the README's `build --target` list builds an engine for.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emseg_rt.engines import gpu_target

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("Quickstart", "Using it")

# (README text, what the test runs instead, why). Applied to every command, in this order.
SUBSTITUTIONS = (
    ("make demo", "emseg-rt demo --out demo-out --shape 2,128,128",
     "`make demo` is `make setup` (pip install -e: done, this test runs the installed emseg-rt) then "
     "`python -m emseg_rt demo`; a 2-slice phantom"),
    ("--shape 64,512,512", "--shape 4,128,128", "a 4-slice phantom"),
    ("scsam-vit-b", "scsam-tiny", "the same family at test size (ViT-B export is minutes and GBs)"),
    ("--precision fp16", "--precision fp16 --component full", "only the graph `segment` runs (one trace, not four)"),
    ("--out heads.pt", "--out heads.pt --steps 2 --batch 2", "2 training steps instead of 1000"),
    ("--out enc.pt", "--out enc.pt --epochs 1 --samples-per-epoch 8 --batch 4",
     "1 epoch of 8 FOVs instead of the paper's 2800 epochs"),
    ("bench --size vit-h", "bench --size tiny --models scsam --backends torch-fp32 --warmup 0 --iters 1 "
     "--no-breakdown", "one tiny measurement instead of Table 5 at ViT-H (hours on a CPU)"),
)
# README commands the test does not run: (a fragment of the command, why).
NOT_RUN = (
    ("make test", "the test suite itself, this test included"),
)
GPU_ONLY = "--device cuda"  # run only on a GPU the README's `build --target` list has an engine for
COMMAND_TIMEOUT_S = 600


def section(text: str, heading: str) -> str:
    """The text under `## heading` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def readme_commands() -> list[str]:
    """Every command line of the sections' ```bash blocks, in order (comments and blank lines dropped)."""
    text = README.read_text()
    commands: list[str] = []
    for heading in SECTIONS:
        for block in re.findall(r"^```bash\n(.*?)^```", section(text, heading), flags=re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def as_tested(command: str, used: set[str]) -> str:
    """`command` with the substitutions applied (their README texts recorded in `used`)."""
    for old, new, _ in SUBSTITUTIONS:
        if old in command:
            command = command.replace(old, new)
            used.add(old)
    return command


def emseg_rt_executable() -> str:
    """The installed console script of this environment."""
    found = shutil.which("emseg-rt", path=str(Path(sys.executable).parent)) or shutil.which("emseg-rt")
    assert found, "emseg-rt is not installed in this environment (pip install -e .)"
    return found


def runs_gpu_commands(commands: list[str]) -> bool:
    """Whether this machine's GPU is one of the targets the README's `build` command builds engines for."""
    target = gpu_target()
    built = [c.split("--target", 1)[1].split()[0].split(",") for c in commands if " build " in f" {c} "]
    return target is not None and any(target in targets for targets in built)


def test_readme_parses_into_the_commands_this_test_knows():
    """Fast: the sections have commands, every substitution and exclusion still matches one."""
    commands = readme_commands()
    assert any(c.startswith("emseg-rt phantom") for c in commands) and len(commands) >= 10, commands
    used: set[str] = set()
    for command in commands:
        as_tested(command, used)
    assert used == {old for old, _, _ in SUBSTITUTIONS}, f"substitutions matching no README command: " \
        f"{sorted({old for old, _, _ in SUBSTITUTIONS} - used)}"
    for fragment, _ in NOT_RUN:
        assert any(fragment in c for c in commands), f"NOT_RUN entry {fragment!r} matches no README command"


def test_readme_commands_run_in_order(tmp_path):
    executable = emseg_rt_executable()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # the package cache: conftest's, per session
    commands = readme_commands()
    on_gpu = runs_gpu_commands(commands)
    ran = 0
    for number, command in enumerate(commands, start=1):
        if any(fragment in command for fragment, _ in NOT_RUN) or (GPU_ONLY in command and not on_gpu):
            continue
        tested = as_tested(command, set())
        words = shlex.split(tested)
        words[0] = executable if words[0] == "emseg-rt" else words[0]
        done = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            pytest.fail(f"README command {number} failed (exit {done.returncode}): {command}\n"
                        f"run as: {tested}\n{tail}", pytrace=False)
        ran += 1
    assert ran >= 10
