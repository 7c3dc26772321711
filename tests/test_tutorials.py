"""The notebooks in tutorials/ run top to bottom against the scripted server, and are
committed without outputs.

Each notebook reads its provider and model from ``CASSIA_SC_PROVIDER`` and
``CASSIA_SC_MODEL``; the tests set them (and ``CASSIA_SC_CACHE_DIR``) before the kernel
starts, so the kernel and the shell commands it runs talk to a local ``LLMServer`` whose
``ScriptedModel`` gives a plausible answer for each Louvain cluster of pbmc68k_reduced:
``tutorial_model``'s, which the documentation build runs the notebooks against too.
The kernel runs on the interpreter running the tests, whatever kernels are installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import tutorial_model
from llm_server import LLMServer
from scripted_llm import ScriptedLLM
from tutorial_model import ANSWERS, BOOST_ANSWER, BOOSTED, N_CLUSTERS

import cassia_sc

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
SCANPY_SESSION = "01_scanpy_session.ipynb"
H5AD_FROM_THE_SHELL = "02_h5ad_from_the_shell.ipynb"
SEURAT_MARKERS = "03_seurat_markers.ipynb"
EXECUTED = {SCANPY_SESSION, H5AD_FROM_THE_SHELL, SEURAT_MARKERS}

# One annotation run per notebook: an annotator and a validator call per cluster, the
# validator passing every first answer; dry runs call nothing.
REQUESTS_PER_RUN = 2 * N_CLUSTERS
# Tutorial 1 also scores every cluster, then boosts the one scored low (BOOSTED): a gene
# request, the answer, and a new score.
REQUESTS_WITH_BOOST = REQUESTS_PER_RUN + N_CLUSTERS + 3


@pytest.fixture
def llm(pbmc_wilcoxon, scripted_llm, monkeypatch) -> ScriptedLLM:
    """The scripted server, with the environment the notebooks read set before any kernel."""
    llm = tutorial_model.start(scripted_llm, pbmc_wilcoxon)
    for name, value in tutorial_model.environment(llm).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as for readers
    return llm


@pytest.fixture
def kernel(tmp_path_factory, monkeypatch) -> str:
    """The name of a kernel running ipykernel on this interpreter (sys.executable), installed
    where Jupyter looks first; "python3" may name another Python's kernel."""
    folder = tmp_path_factory.mktemp("jupyter")
    name = "cassia-sc-tests"
    tutorial_model.install_kernel(folder, name)
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    return name


def run_notebook(name: str, folder: Path, kernel: str):
    """Copy a tutorial into ``folder`` and execute it there on ``kernel``; a failing cell
    fails the test."""
    import nbclient  # the test extra installs them, with ipykernel for the kernel
    import nbformat

    folder.mkdir()
    shutil.copy(TUTORIALS / name, folder / name)
    notebook = nbformat.read(folder / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=kernel,
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell errors
    nbformat.write(notebook, folder / f"executed_{name}")  # kept for a look when debugging
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    return notebook


def text_outputs(cell) -> str:
    """Everything a code cell printed, as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def cell_with_id(notebook, cell_id: str):
    return next(cell for cell in notebook.cells if cell.get("id") == cell_id)


def assert_requests_reached_the_server(server: LLMServer, count: int = REQUESTS_PER_RUN) -> None:
    assert server.request_count == count
    assert {request.model for request in server.requests} == {"test-model"}


def assert_cluster_answers(summary: pd.DataFrame) -> None:
    """The summary CSV holds every cluster, annotated as scripted."""
    summary = summary.astype({"Cluster ID": str})
    assert summary["Cluster ID"].tolist() == list(ANSWERS)
    assert set(summary["Status"]) == {"ok"}
    expected = [answer[0] for answer in ANSWERS.values()]
    assert summary["Predicted General Cell Type"].tolist() == expected


def assert_labels(adata: ad.AnnData, answers=ANSWERS) -> None:
    """Each cell carries its Louvain cluster's scripted cell type and first subtype."""
    clusters = adata.obs["louvain"].astype(str)
    celltype = clusters.map({cluster: answer[0] for cluster, answer in answers.items()})
    subtype = clusters.map({cluster: answer[1][0] for cluster, answer in answers.items()})
    assert adata.obs["cassia_celltype"].astype(str).tolist() == celltype.tolist()
    assert adata.obs["cassia_subtype"].astype(str).tolist() == subtype.tolist()
    record = adata.uns["cassia"]
    assert record["params"]["model"] == "test-model"
    assert set(record["results"]["validation"]) == {"passed"}


@pytest.mark.slow
def test_scanpy_session(llm, kernel, tmp_path):
    folder = tmp_path / "work"
    notebook = run_notebook(SCANPY_SESSION, folder, kernel)

    assert_requests_reached_the_server(llm.server, REQUESTS_WITH_BOOST)
    for name in (
        "pbmc_summary.csv",
        "pbmc_full.csv",
        "pbmc_conversations.json",
        "pbmc_report.html",
        "pbmc_annotated.h5ad",
    ):
        assert (folder / name).is_file(), name
    assert_cluster_answers(pd.read_csv(folder / "pbmc_summary.csv"))
    annotated = ad.read_h5ad(folder / "pbmc_annotated.h5ad")
    assert_labels(annotated, ANSWERS | {BOOSTED: BOOST_ANSWER})
    results = annotated.uns["cassia"]["results"].set_index("cluster")
    assert results.loc[BOOSTED, "initial_cell_type"] == ANSWERS[BOOSTED][0]
    assert results["score"].tolist() == [90.0] * N_CLUSTERS  # the boosted one, rescored
    evidence = text_outputs(cell_with_id(notebook, "evidence"))
    assert "MKI67" in evidence and "similar" in evidence
    report = (folder / "pbmc_report.html").read_text(encoding="utf-8")
    assert "Hematopoietic progenitor cell" in report and "data:image/png" in report

    assert "prompt tokens for 11 clusters" in text_outputs(cell_with_id(notebook, "dry-run"))
    assert "Ranked marker genes" in text_outputs(cell_with_id(notebook, "prompt"))
    conversation = text_outputs(cell_with_id(notebook, "conversation"))
    assert "--- annotator ---" in conversation and '"main_cell_type": "B cell"' in conversation
    # Levels offline from the Cell Ontology, saved with the data.
    broad = annotated.obs.groupby("louvain", observed=True)["cassia_celltype_broad"].first()
    assert broad["0"] == "T cell" and broad["4"] == "B cell" and broad["8"] == "B cell"
    assert broad["1"] == "myeloid cell" and broad["3"] == "NK cell"
    assert "T cell" in text_outputs(cell_with_id(notebook, "levels"))
    for plot in ("umap", "dotplot", "review", "levels-plot", "levels-tree"):
        outputs = cell_with_id(notebook, plot)["outputs"]
        assert any("image/png" in output.get("data", {}) for output in outputs), plot


@pytest.mark.slow
def test_h5ad_from_the_shell(llm, kernel, tmp_path):
    folder = tmp_path / "work"
    notebook = run_notebook(H5AD_FROM_THE_SHELL, folder, kernel)

    # A failing `!` command does not fail its cell: read what the commands printed.
    # The kernel, and the commands it runs with its sys.executable, are this interpreter.
    assert repr(sys.executable) in text_outputs(cell_with_id(notebook, "python"))
    dry_run = text_outputs(cell_with_id(notebook, "dry-run"))
    assert "Dry run: 11 clusters" in dry_run and "error" not in dry_run
    annotate = text_outputs(cell_with_id(notebook, "annotate"))
    assert "11 of 11 clusters annotated" in annotate
    assert "Wrote obs['cassia_celltype'], obs['cassia_subtype']" in annotate
    assert "and uns['cassia'] to pbmc.h5ad" in annotate

    assert_requests_reached_the_server(llm.server)
    annotated = ad.read_h5ad(folder / "pbmc.h5ad")
    assert_labels(annotated)
    assert "rank_genes_groups" in annotated.uns and annotated.X is not None
    assert not list(folder.glob("*.tmp")), "the replacement left a temporary file behind"
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html"):
        assert (folder / f"pbmc_shell_{suffix}").is_file(), suffix
    assert_cluster_answers(pd.read_csv(folder / "pbmc_shell_summary.csv"))


@pytest.mark.slow
def test_seurat_markers(llm, kernel, tmp_path):
    folder = tmp_path / "work"
    notebook = run_notebook(SEURAT_MARKERS, folder, kernel)

    assert_requests_reached_the_server(llm.server)
    exported = pd.read_csv(folder / "findallmarkers.csv")
    assert exported.columns.tolist() == cassia_sc.loadmarker("pbmc68k_unprocessed").columns.tolist()
    for suffix in ("summary.csv", "full.csv", "conversations.json", "report.html"):
        assert (folder / f"seurat_run_{suffix}").is_file(), suffix
    assert_cluster_answers(pd.read_csv(folder / "seurat_run_summary.csv"))
    listed = text_outputs(cell_with_id(notebook, "files"))
    assert all(f"seurat_run_{suffix}" in listed for suffix in ("summary.csv", "report.html"))
    assert "MS4A1" in text_outputs(cell_with_id(notebook, "simple-read"))


def tutorial_paths() -> list[Path]:
    return sorted(TUTORIALS.glob("*.ipynb"))


def test_every_tutorial_is_executed_by_a_test():
    assert {path.name for path in tutorial_paths()} == EXECUTED


@pytest.mark.parametrize("path", tutorial_paths(), ids=lambda path: path.name)
def test_tutorial_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {index} has outputs"
            assert cell["execution_count"] is None, f"cell {index} has an execution count"
        assert "attachments" not in cell or not cell["attachments"], f"cell {index}"
