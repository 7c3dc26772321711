"""cassia_sc.pl: what each plot returns and shows, on an annotated pbmc68k_reduced."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import pytest
import scanpy as sc
from llm_server import Reply
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scripted_model import annotation_reply, signature, verdict_reply

import cassia_sc
from cassia_sc.datasets import example_truth

TRUTH = dict(zip(example_truth()["cluster"], example_truth()["cell_type"], strict=True))


@pytest.fixture
def annotated(pbmc_wilcoxon, scripted_llm):
    """Louvain clusters labelled with their majority bulk label, with three problems:
    cluster 10 fails, cluster 3 cites a gene not in its list, cluster 7 never passes."""
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    cluster_of = {signature(genes): cluster for cluster, genes in markers.items()}

    def annotator(request, genes):
        cluster = cluster_of[signature(genes)]
        if cluster == "10":
            return Reply(status=400, error_message="refused")
        cited = (*genes[:2], "FAKE1") if cluster == "3" else tuple(genes[:3])
        return Reply(content=annotation_reply(TRUTH[cluster], key_markers=cited))

    def validator(request, genes):
        if cluster_of[signature(genes)] == "7":
            return Reply(content=verdict_reply(False, "IRF8 suggests pDC, not cDC."))
        return None

    llm = scripted_llm(annotator=annotator, validator=validator)
    cassia_sc.tl.annotate(
        pbmc_wilcoxon,
        tissue="blood",
        species="human",
        key="wilcoxon",
        client=llm.client(),
        progress=False,
    )
    yield pbmc_wilcoxon
    plt.close("all")


def test_annotations_on_the_umap(annotated, tmp_path):
    ax = cassia_sc.pl.annotations(annotated, show=False)
    assert isinstance(ax, Axes)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    expected = list(annotated.obs["cassia_celltype"].cat.categories)
    # Cluster 10 failed: its cells are NaN, which Scanpy shows in grey as "NA".
    assert legend == [*expected, "NA"]
    assert "CD34+" not in legend
    assert ax.get_title() == "cassia: cell type"
    ax.figure.savefig(tmp_path / "annotations.png", dpi=80, bbox_inches="tight")

    fig = cassia_sc.pl.annotations(
        annotated, label="subtype", return_fig=True, legend_loc="on data"
    )
    assert isinstance(fig, Figure)
    _, own_ax = plt.subplots()
    assert cassia_sc.pl.annotations(annotated, ax=own_ax, show=False) is own_ax


def test_annotations_errors_say_what_to_run(annotated):
    with pytest.raises(cassia_sc.CassiaError, match="key_added='other'"):
        cassia_sc.pl.annotations(annotated, key="other", show=False)
    with pytest.raises(cassia_sc.CassiaError, match="has no 'X_tsne'"):
        cassia_sc.pl.annotations(annotated, basis="tsne", show=False)


def test_markers_dot_plot_shows_the_supported_key_markers(annotated, tmp_path):
    axes = cassia_sc.pl.markers(annotated, n_genes=2, show=False)
    shown = [t.get_text() for t in axes["mainplot_ax"].get_xticklabels()]
    table = annotated.uns["cassia"]["results"].set_index("cluster")
    # Cluster 0 (the first T-cell label) rests on its first two cited genes.
    assert shown[:2] == table.loc["0", "key_markers"].split(", ")[:2]
    assert "FAKE1" not in shown
    rows = [t.get_text() for t in axes["mainplot_ax"].get_yticklabels()]
    assert rows == [str(i) for i in range(11)]
    axes["mainplot_ax"].figure.savefig(tmp_path / "markers.png", dpi=80, bbox_inches="tight")

    dot = cassia_sc.pl.markers(annotated, n_genes=1, return_fig=True)
    labels = {table.loc[c, "main_cell_type"] for c in table.index if table.loc[c, "status"] == "ok"}
    assert set(dot.var_groups.labels) == labels
    assert len(dot.var_names) == len(labels)


def test_review_flags_failed_unvalidated_and_unsupported(annotated, tmp_path):
    ax = cassia_sc.pl.review(annotated, show=False)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[10] == "10: —" and rows[3] == f"3: {TRUTH['3']}"
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert texts[(10, 0)] == "failed"
    assert texts[(7, 1)] == "failed" and texts[(7, 3)] == "2"
    assert texts[(3, 2)] == "FAKE1"
    assert texts[(0, 0)] == "ok" and texts[(0, 1)] == "passed" and texts[(0, 2)] == "none"
    severities = ax.images[0].get_array()
    assert severities[10, 0] == 2 and severities[7, 1] == 2 and severities[3, 2] == 2
    assert severities[0].tolist() == [0, 0, 0, 0]
    ax.figure.savefig(tmp_path / "review.png", dpi=80, bbox_inches="tight")
    assert isinstance(cassia_sc.pl.review(annotated, return_fig=True), Figure)


def test_markers_rows_say_they_are_the_clusters(annotated):
    # Cluster 10 failed: the other clusters' labels are plotted, with every cluster a row.
    axes = cassia_sc.pl.markers(annotated, show=False)
    assert axes["mainplot_ax"].get_ylabel() == "cluster (louvain)"


def test_plots_save_as_scanpy_does_and_review_explains_its_colours(annotated, tmp_path):
    figdir = sc.settings.figdir  # a property of Scanpy's settings: set back by hand
    sc.settings.figdir = tmp_path
    try:
        # Saved by cassia_sc itself: no warning of Scanpy 1.12's deprecated `save`.
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            ax = cassia_sc.pl.review(annotated, save="_pbmc.png", show=False)
            cassia_sc.pl.review(annotated, save=True, show=False)
            cassia_sc.pl.markers(annotated, save="_pbmc.pdf", show=False)
        assert (tmp_path / "review_pbmc.png").stat().st_size > 0
        assert (tmp_path / f"review.{sc.settings.file_format_figs}").stat().st_size > 0
        assert (tmp_path / "dotplot__pbmc.pdf").read_bytes().startswith(b"%PDF")
    finally:
        sc.settings.figdir = figdir
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["fine", "worth a look", "a problem", "does not apply"]
