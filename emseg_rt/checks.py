"""The shared checks of option values: one per kind, called by every command and library entry point that takes
one. Each returns the checked value or raises an `EmsegError` naming the option, the value and what to give."""

from __future__ import annotations

import math
import operator
import os
import re
from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError

SEED_MAX = 2**64 - 1  # numpy's default_rng and torch.manual_seed both take seeds 0 .. 2**64 - 1
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # 'scheme://...'; file:// ones name local paths
GLOB_CHARACTERS = "*?["  # an input holding one of these that names no file is a pattern of files (`segment`)


def check_seed(seed: int, option: str = "--seed", limit: int = SEED_MAX) -> int:
    """`seed` as an int in 0..limit (numpy's and torch's range; scikit-learn's K-means takes 0..2**32 - 1)."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise EmsegError(f"{option} {seed!r}: a seed is a whole number from 0 to {limit}") from None
    if not 0 <= value <= limit:
        raise EmsegError(f"{option} {value}: a seed is a whole number from 0 to {limit}")
    return value


def check_number(value: float, option: str, *, above: float | None = None, at_least: float | None = None,
                 below: float | None = None, at_most: float | None = None) -> float:
    """`value` as a float: finite (no nan, no inf) and within the bounds given (`above` / `below`: strictly)."""
    bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
              f"< {below:g}" if below is not None else "", f"<= {at_most:g}" if at_most is not None else ""]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    inside = math.isfinite(number) and (above is None or number > above) and (
        at_least is None or number >= at_least) and (below is None or number < below) and (
        at_most is None or number <= at_most)
    if not inside:
        wanted = " and ".join(bound for bound in bounds if bound)
        raise EmsegError(f"{option} {value}: must be a finite number" + (f" {wanted}" if wanted else ""))
    return number


def split_items(text: str, option: str, example: str) -> tuple[str, ...]:
    """A comma-separated option value → its items, spaces around them dropped ('sm86, sm89'); an empty item
    (an empty value, ',,', a trailing comma) is refused: it is a typo, never a default."""
    items = tuple(item.strip() for item in str(text).split(","))
    if not all(items):
        raise EmsegError(f"{option} {text!r}: empty entry in the comma-separated list; give e.g. {example}")
    return items


def is_url(source: Any) -> bool:
    """True for 'scheme://...' strings other than file:// (those are local paths)."""
    return isinstance(source, str) and bool(URL_SCHEME.match(source)) and not source.startswith("file://")


def check_input_exists(source: Any, patterns: bool = False) -> None:
    """EmsegError 'input PATH does not exist' (one line, the readers' own check) when `source` is a local path (a
    str or PathLike with no scheme://) that is not there. With `patterns`, a text holding glob characters passes
    too (`segment 'raw/*.tif'`: a pattern of files). Arrays and URLs (file:// too) pass: their readers check them.
    Needs nothing but the file system, so the CLI can say it before it loads any library."""
    if not isinstance(source, (str, os.PathLike)) or URL_SCHEME.match(str(source)):
        return
    path = Path(source)
    if not path.exists() and not (patterns and any(c in str(source) for c in GLOB_CHARACTERS)):
        raise EmsegError(f"input {path} does not exist")
