"""Every module of the package imports (no undefined names hiding in rarely used files)."""

import importlib
import pkgutil

import pytest

import lightft

MODULES = sorted(m.name for m in pkgutil.walk_packages(lightft.__path__, "lightft."))


def test_found_the_package():
    assert "lightft.modules.sft" in MODULES and "lightft.cli" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
