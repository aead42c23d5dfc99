"""Sphinx configuration for the trio_gearman documentation."""

from __future__ import annotations

import importlib

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

import trio_gearman

project = "trio_gearman"
author = "The trio_gearman developers"
copyright = "2026, the trio_gearman developers"
release = trio_gearman.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
python_maximum_signature_line_length = 88
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False

logger = logging.getLogger(__name__)


PUBLIC_MODULES = ["trio_gearman", "trio_gearman.testing"]
"""Modules whose every ``__all__`` name the docs must document."""


def check_api_reference(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn (an error under ``-W``) about any public name the docs do not document."""
    documented = env.get_domain("py").objects
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        missing = [name for name in module.__all__ if f"{module_name}.{name}" not in documented]
        if missing:
            logger.warning(
                "the docs do not document %s",
                ", ".join(f"{module_name}.{name}" for name in missing),
            )


def setup(app: Sphinx) -> None:
    app.connect("env-check-consistency", check_api_reference)
