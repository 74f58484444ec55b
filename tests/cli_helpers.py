"""Running `emseg-rt` in-process as the console script does, and checking its one-line refusals."""

from __future__ import annotations

import sys

from emseg_rt.cli import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`emseg-rt ARGS` in-process → (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["emseg-rt", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit code 2 and exactly one `emseg-rt: error:` line on stderr holding every fragment (no traceback)."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("emseg-rt: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
