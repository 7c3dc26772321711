"""Sphinx configuration of the cassia_sc documentation (MyST, the scverse layout)."""

import shutil
from datetime import date
from importlib.metadata import version as installed_version
from pathlib import Path

HERE = Path(__file__).parent

project = "cassia_sc"
author = "cassia_sc developers"
copyright = f"{date.today().year}, {author}"
release = installed_version("cassia-sc")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
    "sphinxarg.ext",
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # tutorials are committed without outputs; CI executes them
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "comma"

# Offline builds: no intersphinx inventories are fetched (this machine has no internet).
intersphinx_mapping = {}
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "cassia_sc"
html_theme_options = {"repository_url": "", "use_repository_button": False}


def _copy_tutorials(app) -> None:
    """Sphinx reads sources under docs/ only: mirror the notebooks of tutorials/ here."""
    target = HERE / "tutorials"
    target.mkdir(exist_ok=True)
    for notebook in sorted((HERE.parent / "tutorials").glob("*.ipynb")):
        shutil.copyfile(notebook, target / notebook.name)


def setup(app) -> None:  # noqa: D103
    app.connect("builder-inited", _copy_tutorials)
