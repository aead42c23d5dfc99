"""The public namespace: every public name is exported once, documented and importable."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import trio_gearman
import trio_gearman.testing
from trio_gearman import _exceptions

PUBLIC_MODULES = [trio_gearman, trio_gearman.testing]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda module: module.__name__)
def test_all_is_sorted_unique_and_importable(module: ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names)  # the order ruff's RUF022 keeps (upper case first)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), name


def test_no_public_name_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(trio_gearman).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(trio_gearman.__all__) - {"__version__"}


def test_every_exception_is_exported_and_rooted_at_gearman_error() -> None:
    for name in _exceptions.__all__:
        exc = getattr(_exceptions, name)
        assert issubclass(exc, trio_gearman.GearmanError), name
        assert getattr(trio_gearman, name) is exc, name


def test_public_objects_have_docstrings() -> None:
    for name in trio_gearman.__all__:
        value = getattr(trio_gearman, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_no_exception_shadows_a_builtin() -> None:
    import builtins

    assert not set(_exceptions.__all__) & set(dir(builtins))
