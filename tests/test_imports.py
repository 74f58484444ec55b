"""Every module of emseg_rt imports in the installed environment (an undeclared dependency fails here)."""

import importlib
import pkgutil

import pytest

import emseg_rt

# `emseg_rt.__main__` runs the CLI when imported (`python -m emseg_rt`): its import is the CLI tests' job.
MODULES = sorted(info.name for info in pkgutil.walk_packages(emseg_rt.__path__, prefix="emseg_rt.")
                 if not info.name.endswith("__main__"))


def test_the_package_has_modules():
    assert "emseg_rt.runtime.segment" in MODULES and "emseg_rt.export.fp16" in MODULES and len(MODULES) > 40


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module):
    importlib.import_module(module)
