"""Every output stays byte-identical: representative `segment` runs (CLI defaults, blends, probabilities, axis y,
pyramid levels, instances, into-input, TTA with a window, the array API, prompt-das with --prompts auto and the
density watershed) write files whose sha256 equal the ones recorded from the code before issue 24's refactor.

The runs and what is left out of the comparison live in `scripts/record_output_digests.py` (one list, used to
record and here to check). To re-record after an intended output change:
    python scripts/record_output_digests.py --out tests/data/output_digests.json
and say in the commit which output changed and why.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDED = json.loads((REPO / "tests" / "data" / "output_digests.json").read_text())["cases"]


def _load_recorder():
    spec = importlib.util.spec_from_file_location("record_output_digests",
                                                  REPO / "scripts" / "record_output_digests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recorder = _load_recorder()


def first_difference(expected: dict[str, str], found: dict[str, str]) -> str | None:
    """The first file (sorted by path) that is missing, new or has other bytes; None when all agree."""
    for path in sorted(set(expected) | set(found)):
        if path not in found:
            return f"{path}: no longer written"
        if path not in expected:
            return f"{path}: written now, not before"
        if expected[path] != found[path]:
            return f"{path}: other bytes (sha256 {found[path][:12]}…, recorded {expected[path][:12]}…)"
    return None


def test_every_recorded_case_is_still_run():
    assert sorted(RECORDED) == sorted(recorder.CASES)


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_output_is_byte_identical_to_the_recorded_run(case, tmp_path):
    found = recorder.run_case(case, tmp_path / case)
    assert found, f"{case} wrote nothing"
    difference = first_difference(RECORDED[case], found)
    assert difference is None, f"{case}: {difference}"


def test_first_difference_names_the_file():
    assert first_difference({"a": "1", "b": "2"}, {"a": "1", "b": "2"}) is None
    assert first_difference({"a": "1", "b": "2"}, {"a": "1", "b": "3"}).startswith("b: other bytes")
    assert first_difference({"a": "1"}, {"a": "1", "c": "0"}) == "c: written now, not before"
    assert first_difference({"a": "1", "b": "2"}, {"b": "2"}) == "a: no longer written"
