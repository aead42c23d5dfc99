"""Sphinx configuration for the trio_gearman documentation."""

from __future__ import annotations

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
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
