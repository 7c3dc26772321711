"""The wheel carries everything an installed cassia-sc reads at run time, the ``cassia-sc``
command, and the metadata a package index shows.

The wheel and the sdist are built from this checkout with the build backend installed
here (the test extra has hatchling), so no package index is reached. ``.ci/run`` goes
further: it builds the sdist and the wheel from it in a new environment, installs the
wheel there and runs it from outside the clone.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from cassia_sc._version import __version__

pytestmark = pytest.mark.slow  # builds in other processes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cassia_sc"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DIST_INFO = f"cassia_sc-{__version__}.dist-info"

# What the package reads with importlib.resources or jinja2's PackageLoader, and the marker
# that tells type checkers it is typed: each pattern must match files, all in the wheel.
PACKAGE_DATA = (
    "py.typed",
    "data/*.csv",
    "data/*.csv.gz",
    "data/LICENSE-CASSIA",
    "data/README.md",
    "prompts/*.j2",
    "export/templates/*",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    folder = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(folder),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = folder.glob("cassia_sc-*.whl")
    assert path.name == f"cassia_sc-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> Message:
    return Parser().parsestr(wheel.read(f"{DIST_INFO}/METADATA").decode("utf-8"))


def source_files(pattern: str) -> list[str]:
    """The package's files matching ``pattern``, as paths inside the wheel."""
    return sorted(
        path.relative_to(ROOT).as_posix() for path in PACKAGE.glob(pattern) if path.is_file()
    )


@pytest.mark.parametrize("pattern", PACKAGE_DATA)
def test_the_wheel_carries_the_package_data(wheel, pattern):
    expected = source_files(pattern)
    assert expected, f"no file of the package matches {pattern}"
    missing = set(expected) - set(wheel.namelist())
    assert not missing


def test_the_wheel_carries_every_module_and_nothing_else(wheel):
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    names = wheel.namelist()
    assert modules <= set(names)
    stray = [
        name
        for name in names
        if not name.startswith(("cassia_sc/", f"{DIST_INFO}/"))
        or "__pycache__" in name
        or name.endswith((".pyc", ".h5ad", ".tmp"))
    ]
    assert not stray


def test_the_wheel_carries_both_licences(wheel):
    names = set(wheel.namelist())
    assert f"{DIST_INFO}/licenses/LICENSE" in names  # ours, MIT
    assert f"{DIST_INFO}/licenses/cassia_sc/data/LICENSE-CASSIA" in names  # CASSIA's data
    text = wheel.read(f"{DIST_INFO}/licenses/LICENSE").decode("utf-8")
    assert text.startswith("MIT License")


def test_the_wheel_installs_the_command(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{DIST_INFO}/entry_points.txt").decode("utf-8"))
    assert dict(entry_points["console_scripts"]) == {"cassia-sc": "cassia_sc.cli:main"}


def test_the_metadata_says_what_an_index_shows(metadata):
    assert metadata["Name"] == "cassia-sc"
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "pip install -e" in metadata.get_payload()  # README.md, with its install section

    classifiers = metadata.get_all("Classifier")
    assert classifiers == PROJECT["classifiers"]
    for classifier in (
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    # PEP 639: the SPDX expression above says the licence; the classifiers are deprecated.
    assert not [c for c in classifiers if c.startswith("License ::")]

    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    assert all(url.startswith("https://") for url in urls.values())
    assert {"single-cell", "scanpy", "anndata"} <= set(metadata["Keywords"].split(","))
    assert {"ontology", "dask", "docs", "test"} <= set(metadata.get_all("Provides-Extra"))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The paths in the sdist, relative to its top folder."""
    folder = tmp_path_factory.mktemp("sdist")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "hatchling",
            "build",
            "--target",
            "sdist",
            "--directory",
            str(folder),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = folder.glob("cassia_sc-*.tar.gz")
    with tarfile.open(path) as archive:
        yield [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]


def test_the_sdist_holds_the_sources_and_no_build_output(sdist):
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "conftest.py",  # the suite's own settings (no price list asked for)
        "cassia_sc/__init__.py",
        "cassia_sc/data/cassia_unprocessed.csv.gz",
        "tests/conftest.py",
        "tutorials/01_scanpy_session.ipynb",
        "docs/conf.py",
        "docs/_static/report.png",
        "benchmarks/RESULTS.md",
    ):
        assert needed in sdist, needed
    # Made by the docs build and the tests (they exist in a working checkout), or only CI's.
    unwanted = ("docs/_build/", "docs/generated/", "docs/tutorials/", ".ci/", ".pytest_cache/")
    assert not [name for name in sdist if name.startswith(unwanted)]
    assert not [name for name in sdist if "__pycache__" in name or name.endswith(".h5ad")]
