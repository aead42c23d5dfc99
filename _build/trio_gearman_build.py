"""The build backend: setuptools', plus mypyc when ``TRIO_GEARMAN_COMPILE=1`` asks for the
compiled build (see setup.py).

``pip install .`` builds the pure-Python package with setuptools alone; with
``TRIO_GEARMAN_COMPILE=1`` the build environment also gets mypyc, and attrs for the
types of the compiled modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the other PEP 517 hooks, unchanged)

_T = TypeVar("_T")

COMPILE_VARIABLE = "TRIO_GEARMAN_COMPILE"
"""The environment variable that asks for the compiled build: ``1`` (or ``0``, unset: pure)."""

COMPILE_REQUIRES = ("mypy[mypyc] >= 2.4", "attrs >= 23.1")
"""What the compiled build needs beyond setuptools."""

COMPILED_MODULES = (
    "trio_gearman/_proto/_codec.py",
    "trio_gearman/_proto/server/admin.py",
    "trio_gearman/_proto/server/cluster.py",
    "trio_gearman/_proto/server/jobs.py",
    "trio_gearman/_proto/server/listing.py",
    "trio_gearman/_proto/server/model.py",
    "trio_gearman/_proto/server/names.py",
    "trio_gearman/_proto/server/state.py",
)
"""The modules the compiled build compiles: the codec and the server's state machine.

Left pure: ``_packets.py`` (compiled, its attrs classes would take their ``ClassVar``
annotations for fields: mypyc gives attrs the annotations' classes, not their text),
``server/acl.py`` (attrs fields with converters, which mypyc does not compile; it runs
once per connection), ``_admin.py``, ``client.py`` and ``worker.py`` (not on the
server's hot path).
"""


def compile_requested() -> bool:
    """Whether ``TRIO_GEARMAN_COMPILE`` asks for the compiled build.

    Raises:
        SystemExit: the variable is set to something other than ``0`` or ``1``.
    """
    value = os.environ.get(COMPILE_VARIABLE, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise SystemExit(f"trio-gearman: {COMPILE_VARIABLE} must be 0 or 1, not {value!r}")


def _pure(hook: Callable[..., _T], *args: Any) -> _T:
    """Run a setuptools hook as for the pure build: one that builds no extension.

    setuptools runs setup.py to learn its own requirements (before mypyc is there) and
    to write the metadata (which the extensions do not change): without compiling,
    mypyc runs once, for the wheel.
    """
    value = os.environ.get(COMPILE_VARIABLE)
    os.environ[COMPILE_VARIABLE] = "0"
    try:
        return hook(*args)
    finally:
        if value is None:
            del os.environ[COMPILE_VARIABLE]
        else:
            os.environ[COMPILE_VARIABLE] = value


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    """setuptools' requirements, and mypyc's when the compiled build is asked for."""
    if not compile_requested():
        return _setuptools.get_requires_for_build_wheel(config_settings)
    return [*_pure(_setuptools.get_requires_for_build_wheel, config_settings), *COMPILE_REQUIRES]


def _editable_is_pure() -> None:
    if compile_requested():
        raise SystemExit(
            f"trio-gearman: {COMPILE_VARIABLE}=1 builds a wheel (pip install .); an editable "
            "install (pip install -e .) runs the checkout's own sources, so it is always pure "
            "Python"
        )


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    """setuptools' requirements for ``pip install -e``, which is always pure Python."""
    _editable_is_pure()
    return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    """setuptools' metadata, written without compiling."""
    return _pure(_setuptools.prepare_metadata_for_build_wheel, metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Any = None
) -> str:
    """setuptools' metadata for ``pip install -e``, which is always pure Python."""
    _editable_is_pure()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: Any = None,
    metadata_directory: str | None = None,
) -> str:
    """setuptools' editable wheel, which is always pure Python."""
    _editable_is_pure()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
