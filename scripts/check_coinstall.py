"""Can nnU-Net v2 be installed beside emseg-rt without breaking it? (issue 25: a SAMDA user has nnU-Net installed.)

    python scripts/check_coinstall.py                     # `pip install nnunetv2` into this environment
    python scripts/check_coinstall.py "nnunetv2==2.8.1"   # any other requirement(s)
    make check-coinstall                                  # the same, after `make setup`

Asks pip what `pip install nnunetv2` would do in the environment emseg-rt is installed in (by `make setup`),
without installing anything: `pip install --dry-run --report -` (pip >= 22.2) resolves against the package
index exactly as the real command would, and reports every distribution it would install or replace. This
script then lays those over what is installed and checks, on the environment as it would be afterwards, that

- every requirement of emseg-rt (its extras given by --extras, `dev` by default as `make setup` installs) and,
  transitively, of everything those bring, still holds, and
- none of those distributions would be downgraded.

pip itself does not check this: `pip install X` resolves X's requirements only, replaces what X needs, and
merely warns afterwards about installed packages whose requirements it broke. Prints what would change; exit 0
when nothing emseg-rt needs would be broken or downgraded, 1 when something would, 2 when the check could
not run (pip older than 22.2, emseg-rt not installed, or pip could not resolve the requirement).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import NoReturn

try:  # pytest's own dependency: there in every environment `make setup` made
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:
    print(f"check_coinstall: no `packaging` in {sys.executable}: run it with the interpreter emseg-rt is installed "
          "in (`make check-coinstall PYTHON=...`)", file=sys.stderr)
    sys.exit(2)

PROJECT = "emseg-rt"
MIN_PIP = Version("22.2")  # `pip install --dry-run --report`


@dataclass(frozen=True)
class Dist:
    """One distribution as installed, or as pip would install it: its version and its Requires-Dist lines."""

    version: str
    requires: tuple[str, ...]


@dataclass(frozen=True)
class Need:
    """One requirement on a distribution that emseg-rt needs, and who states it (`emseg-rt[dev]`, `dask`)."""

    requirement: Requirement
    required_by: str


def cannot_check(message: str) -> NoReturn:
    """The check could not run: one line (or pip's own words) on stderr, exit code 2."""
    print(f"check_coinstall: {message}", file=sys.stderr)
    raise SystemExit(2)


def installed() -> dict[str, Dist]:
    """Every distribution on this interpreter's path, by canonical name."""
    dists: dict[str, Dist] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        dists.setdefault(name, Dist(dist.version, tuple(dist.requires or ())))
    return dists


def dry_run(requirements: list[str]) -> dict[str, Dist]:
    """What `pip install REQUIREMENTS` would install or replace here, by canonical name (nothing is installed).

    Exit code 2 with pip's own message when pip cannot resolve them (or cannot reach the index)."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
               "--report", "-", *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        cannot_check(f"pip could not resolve {' '.join(requirements)}:\n{tail}")
    report = json.loads(done.stdout[done.stdout.index("{"):])
    return {canonicalize_name(item["metadata"]["name"]): Dist(item["metadata"]["version"],
                                                               tuple(item["metadata"].get("requires_dist") or ()))
            for item in report["install"]}


def applies(requirement: Requirement, extras: frozenset[str]) -> str | None:
    """Which of `extras` a Requires-Dist line holds for on this interpreter: "" for a line without an extra
    marker (or one that holds without extras), an extra's name, or None when it does not apply."""
    if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        return ""
    return next((extra for extra in sorted(extras) if requirement.marker.evaluate({"extra": extra})), None)


def needs_of(root: str, extras: frozenset[str], dists: dict[str, Dist]) -> dict[str, list[Need]]:
    """Every requirement that `root[extras]` needs, transitively, over `dists`: canonical name → its Needs.

    A requirement with extras (`dask[distributed]`, `emseg-rt[formats]`) brings that distribution's lines for
    those extras too; a distribution missing from `dists` is recorded as needed and not followed further."""
    needs: dict[str, list[Need]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(root), extras)]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen or name not in dists:
            continue
        seen.add((name, wanted))
        for line in dists[name].requires:
            requirement = Requirement(line)
            extra = applies(requirement, wanted)
            if extra is None:
                continue
            target = canonicalize_name(requirement.name)
            need = Need(requirement, f"{name}[{extra}]" if extra else name)
            if target != name and need not in needs.setdefault(target, []):  # emseg-rt[formats]: its own extras
                needs[target].append(need)
            todo.append((target, frozenset(requirement.extras)))
    return needs


def problems(needs: dict[str, list[Need]], before: dict[str, Dist], after: dict[str, Dist]) -> list[str]:
    """One line per need that `after` breaks (missing, outside its specifier) and per needed downgrade."""
    found: list[str] = []
    for name, wanted in sorted(needs.items()):
        if name not in after:
            found.append(f"{name} is needed by {wanted[0].required_by} and is not installed (run `make setup`)")
            continue
        version = after[name].version
        for need in wanted:
            if not need.requirement.specifier.contains(version, prereleases=True):
                found.append(f"{name} {version} breaks {need.required_by}'s requirement {need.requirement}")
        if name in before and Version(version) < Version(before[name].version):
            found.append(f"{name} would be downgraded {before[name].version} → {version} (needed by "
                         f"{wanted[0].required_by})")
    return found


def changes(before: dict[str, Dist], planned: dict[str, Dist], needs: dict[str, list[Need]]) -> list[str]:
    """What the install would do, one line per distribution: new, or old → new, and whether emseg-rt needs it."""
    lines = []
    for name, dist in sorted(planned.items()):
        old = before[name].version if name in before else "(new)"
        mark = f"  ← needed by {needs[name][0].required_by}" if name in needs else ""
        lines.append(f"  {name:32} {old:>12} → {dist.version}{mark}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Check that installing the requirements beside emseg-rt keeps everything emseg-rt needs; 0 when it does."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", nargs="*", default=["nnunetv2"], help="what to install (default nnunetv2)")
    parser.add_argument("--extras", default="dev", help="emseg-rt's extras installed here, comma-separated")
    args = parser.parse_args(argv)
    if Version(metadata.version("pip")) < MIN_PIP:
        cannot_check(f"pip {metadata.version('pip')} has no --dry-run --report; "
                     f"`{sys.executable} -m pip install -U pip` (>= {MIN_PIP})")
    before = installed()
    if canonicalize_name(PROJECT) not in before:
        cannot_check(f"{PROJECT} is not installed in {sys.executable}; run `make setup` first")
    planned = dry_run(args.requirements)
    after = before | planned
    extras = frozenset(filter(None, (extra.strip() for extra in args.extras.split(","))))
    needs = needs_of(PROJECT, extras, after)
    target = " ".join(args.requirements)
    print(f"check_coinstall: `pip install {target}` would install or replace {len(planned)} distributions:")
    print("\n".join(changes(before, planned, needs)))
    found = problems(needs, before, after)
    if found:
        print(f"check_coinstall: FAILED, {target} beside {PROJECT} breaks what {PROJECT} needs:", *found, sep="\n  ")
        return 1
    kept = sum(name in before for name in needs)
    print(f"check_coinstall: ok, all {len(needs)} distributions {PROJECT}[{args.extras}] needs keep their "
          f"requirements ({kept} installed, none downgraded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
