"""Sphinx configuration of the documentation site.

Build (offline; the tutorial notebook runs on every build)::

    python -m pip install -c constraints.txt -e ".[docs]"
    python -m sphinx -W -b html docs <output folder>

The Markdown guides are parsed by MyST (through myst-nb, which brings myst-parser with it),
the API reference is autodoc's reading of the docstrings (reST field lists, so no napoleon),
and ``tutorial.ipynb`` is executed by myst-nb on a Jupyter kernel.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, whatever copy is installed

import pyro_vae  # noqa: E402

project = "pyro_vae"
author = "the pyro_vae authors"
copyright = "the pyro_vae authors"
release = pyro_vae.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",  # the table of the top-level exports in api.md
    "sphinx.ext.mathjax",
    "myst_nb",  # includes myst_parser: do not load both
]

# failure_cases.md is generated (python -m tests.faults) and included on purpose
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# -- MyST ---------------------------------------------------------------------------------------
# $...$ and $$...$$ math in the guides and the notebook's Markdown cells, \begin{align} blocks
myst_enable_extensions = ["dollarmath", "amsmath"]
# [text](models.md#the-interface) links to a guide's section
myst_heading_anchors = 3

# -- Notebook execution (myst-nb) ---------------------------------------------------------------
# Execute the tutorial on every build, so that a broken notebook fails the build (and CI)
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# in a temporary folder: whatever the tutorial writes (a run folder) stays out of the checkout
nb_execution_in_temp = True

# -- autodoc ------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"pyro_vae {release}"
html_static_path: list[str] = []
