from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # plots render to files, never to a screen

import anndata as ad
import pytest
import scanpy as sc
from scripted_llm import ScriptedLLM, ScriptedLLMFactory
from scripted_model import signature

import cassia_sc

DATA = Path(__file__).parent / "data"
MARKER100 = DATA / "marker100.csv"


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads a real key or writes to the user's cache folder."""
    monkeypatch.setenv("CASSIA_SC_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))
    for variable in (
        "OPENROUTER_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "CASSIA_API_KEY",
        "CUSTOMIZED_API_KEY",
        "DEEPSEEK_API_KEY",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def _pbmc_wilcoxon_once() -> ad.AnnData:
    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True, key_added="wilcoxon")
    return adata


@pytest.fixture
def pbmc() -> ad.AnnData:
    """pbmc68k_reduced as shipped: bulk_labels, a stored logreg rank_genes_groups, X_umap."""
    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc_wilcoxon(_pbmc_wilcoxon_once: ad.AnnData) -> ad.AnnData:
    """pbmc68k_reduced with a Wilcoxon result on louvain, with pts, in uns['wilcoxon']."""
    return _pbmc_wilcoxon_once.copy()


# -- the scripted model, served ------------------------------------------------------------
# ScriptedLLM and its factory live in scripted_llm.py: the docs build starts them too.


@pytest.fixture
def scripted_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLLMFactory]:
    """Start scripted-model servers for this test; every server and client closes after it.

    ``scripted_llm(cell_types=None, *, annotator=None, validator=None, formatter=None,
    delay=0.0, handler=None)`` starts an ``LLMServer`` answering as a ``ScriptedModel``
    (or as ``handler``) and returns a :class:`ScriptedLLM`::

        def test_b_cells(scripted_llm):
            llm = scripted_llm({signature(markers): "B cell"}, delay=0.1)
            result = cassia_sc.run_batch(table, tissue="blood", species="human", **llm.options())
            assert llm.server.request_count == 2 * len(table)

    ``llm.client(max_retries=1)`` gives an ``LLMClient`` for ``client=`` instead.
    """
    with ScriptedLLMFactory(tmp_path_factory) as factory:
        yield factory


# -- pbmc68k_reduced as a file, and a model that knows its clusters ------------------------


def digest(path: Path) -> str:
    """The SHA-256 of a file, to tell whether it changed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def h5ad(pbmc, tmp_path) -> Path:
    """pbmc68k_reduced written to an .h5ad file."""
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    return path


@pytest.fixture
def llm(pbmc, scripted_llm) -> ScriptedLLM:
    """A scripted model that calls each cluster of pbmc68k_reduced "type <cluster>"."""
    markers = cassia_sc.top_markers(pbmc)
    return scripted_llm({signature(g): f"type {c}" for c, g in markers.items()})


# -- the command line ------------------------------------------------------------------------


def cli(llm: ScriptedLLM, *args: str) -> list[str]:
    """The command's arguments: ``args``, then the options that send every call to ``llm``."""
    return [
        *args,
        "--tissue",
        "blood",
        "--species",
        "human",
        "--model",
        llm.model,
        "--provider",
        llm.base_url,
        "--cache-dir",
        str(llm.cache_dir),
    ]


def command(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cassia_sc`` with this interpreter: no console script on PATH needed."""
    return subprocess.run(
        [sys.executable, "-m", "cassia_sc", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )
