"""Build script: the pure-Python package, or with ``TRIO_GEARMAN_COMPILE=1`` its hot modules
compiled with mypyc.

The metadata lives in pyproject.toml. This file only adds the compiled extension modules
when they are asked for (docs/howto/production.rst, "A compiled build"); the build
backend in ``_build/`` then adds mypyc to the build requirements. The pure-Python
sources stay in the wheel beside the compiled modules, which Python imports first.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build"))
from trio_gearman_build import COMPILED_MODULES, compile_requested


class _BuildExt(build_ext):
    """build_ext that says what to do when the C compiler fails or is missing."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError) as exc:
            sys.exit(
                f"trio-gearman: compiling the mypyc build failed ({exc}).\n"
                "It needs a C compiler and the Python headers (Debian: apt-get install "
                "gcc python3-dev). Unset TRIO_GEARMAN_COMPILE to install the pure-Python "
                "package instead."
            )


def _compiled() -> dict[str, Any]:
    if not compile_requested():
        return {}
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "trio-gearman: TRIO_GEARMAN_COMPILE=1 needs mypyc in the build environment "
            "(pip installs it by itself; with --no-build-isolation, first "
            "pip install 'mypy[mypyc]' attrs)."
        )
    return {
        # The rest of the package is read for its types, its errors not reported: the
        # build environment has none of its dependencies but attrs (mypy checks it all).
        "ext_modules": mypycify(["--follow-imports=silent", *COMPILED_MODULES], opt_level="2"),
        "cmdclass": {"build_ext": _BuildExt},
    }


setup(**_compiled())
