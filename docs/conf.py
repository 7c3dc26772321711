"""Sphinx configuration of the cassia_sc documentation (MyST, the scverse layout)."""

import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from datetime import date
from importlib.metadata import version as installed_version
from pathlib import Path

HERE = Path(__file__).parent
# The tutorials run against the tests' scripted model (tests/tutorial_model.py).
sys.path.insert(0, str(HERE.parent / "tests"))

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
# The tutorials are committed without outputs: every build runs them, in a temporary folder
# (the files they write go with it), against a scripted model served on 127.0.0.1 for the
# build (no key, no network; see _serve_tutorial_model), on the build's own interpreter.
nb_execution_mode = "force"
nb_execution_excludepatterns = ["*.md"]  # a page is never run, even with notebook top-matter
nb_execution_in_temp = True
nb_execution_timeout = 300  # seconds per cell; the slowest takes a few
nb_execution_raise_on_error = True  # a failing cell fails the build, with its traceback
nb_execution_show_tb = True
nb_merge_streams = True  # a progress bar shows as its last state, not one block per update
TUTORIAL_KERNEL = "cassia-sc-docs"
nb_kernel_rgx_aliases = {"python3": TUTORIAL_KERNEL}
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
    """Mirror the notebooks of tutorials/ here (Sphinx reads sources under docs/ only).

    A copy is written only when it changed, so that Sphinx re-reads (and re-runs) no
    unchanged one.
    """
    target = HERE / "tutorials"
    target.mkdir(exist_ok=True)
    for path in sorted((HERE.parent / "tutorials").glob("*.ipynb")):
        copy = target / path.name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)


# What _serve_tutorial_model started, closed by _stop_tutorial_model.
_TUTORIAL_MODEL = ExitStack()


def _serve_tutorial_model(app) -> None:
    """Serve the tutorials' scripted model for this build and point the kernels at it.

    The kernels myst-nb starts inherit this process's environment: the variables the
    notebooks read, a Jupyter path whose TUTORIAL_KERNEL runs this interpreter, no
    ``MPLBACKEND`` (plots draw inline) and no key the local address would read.
    """
    import tutorial_model

    from cassia_sc.providers import resolve_endpoint

    llm = _TUTORIAL_MODEL.enter_context(tutorial_model.serve())
    jupyter = Path(_TUTORIAL_MODEL.enter_context(tempfile.TemporaryDirectory(prefix="cassia-sc-")))
    tutorial_model.install_kernel(jupyter, TUTORIAL_KERNEL)
    variables = tutorial_model.environment(llm)
    variables["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(jupyter), os.environ.get("JUPYTER_PATH")])
    )
    unset = ["MPLBACKEND", *resolve_endpoint(llm.base_url).key_variables]
    saved = {name: os.environ.get(name) for name in [*variables, *unset]}
    _TUTORIAL_MODEL.callback(_restore_environment, saved)
    os.environ.update(variables)
    for name in unset:
        os.environ.pop(name, None)


def _restore_environment(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _stop_tutorial_model(app, exception) -> None:
    _TUTORIAL_MODEL.close()


def setup(app) -> None:  # noqa: D103
    app.connect("builder-inited", _copy_tutorials)
    app.connect("builder-inited", _serve_tutorial_model)
    app.connect("build-finished", _stop_tutorial_model)
