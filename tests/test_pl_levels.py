"""cassia_sc.pl.levels and pl.level_tree: what each panel, legend and row shows."""

from __future__ import annotations

import colorsys
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

import cassia_sc
from cassia_sc._keys import Key
from cassia_sc.pl import level_colours, level_counts

COLUMNS = {
    "broad": Key.obs.celltype_broad("cassia"),
    "detailed": Key.obs.celltype_detailed("cassia"),
    "very_detailed": Key.obs.celltype_very_detailed("cassia"),
}
#: What tl.levels gives each louvain cluster of pbmc68k_reduced (its majority bulk label):
#: clusters 4, 6 and 8 have no very detailed label, cluster 10 failed (no label at all).
BY_CLUSTER = {
    "0": ("T cell", "CD4+ T cell", "regulatory T cell"),  # 130 cells
    "1": ("myeloid cell", "monocyte", "classical monocyte"),  # 123
    "2": ("myeloid cell", "dendritic cell", "conventional dendritic cell type 2"),  # 117
    "3": ("T cell", "CD8+ T cell", "effector memory CD8+ T cell"),  # 70
    "4": ("B cell", "naive B cell", None),  # 66
    "5": ("myeloid cell", "dendritic cell", "conventional dendritic cell type 1"),  # 54
    "6": ("myeloid cell", "dendritic cell", None),  # 42
    "7": ("myeloid cell", "monocyte", "non-classical monocyte"),  # 35
    "8": ("B cell", "memory B cell", None),  # 31
    "9": ("T cell", "CD4+ T cell", "naive CD4+ T cell"),  # 19
    "10": (None, None, None),  # 13
}


def set_levels(adata, by_cluster=BY_CLUSTER, key="cassia"):
    """Write the three obs columns as tl.levels does: categoricals, NaN where none."""
    clusters = adata.obs["louvain"].astype(str)
    for i, level in enumerate(COLUMNS):
        labels = clusters.map({c: levels[i] for c, levels in by_cluster.items()})
        adata.obs[getattr(Key.obs, f"celltype_{level}")(key)] = pd.Categorical(labels)


@pytest.fixture
def leveled(pbmc):
    set_levels(pbmc)
    yield pbmc
    plt.close("all")


def hue(colour):
    return colorsys.rgb_to_hls(*to_rgb(colour))[0]


def hue_distance(one, other):
    turn = abs(hue(one) - hue(other))
    return min(turn, 1 - turn)


def lightness(colour):
    return colorsys.rgb_to_hls(*to_rgb(colour))[1]


def drawn_colours(ax):
    """The colour of every point of a panel, counted."""
    points = ax.collections[0]
    assert len(points.get_offsets()) == 700
    return Counter(to_hex(c) for c in points.get_facecolors())


def test_one_panel_per_level_with_its_labels_in_its_legend(leveled, tmp_path):
    axes = cassia_sc.pl.levels(leveled, show=False)
    assert len(axes) == 3 and all(isinstance(ax, Axes) for ax in axes)
    assert [ax.get_title() for ax in axes] == [
        "cassia: broad",
        "cassia: detailed",
        "cassia: very detailed",
    ]
    colours = level_colours(leveled)
    table = level_counts(leveled)
    for ax, (level, column) in zip(axes, COLUMNS.items(), strict=True):
        legend = ax.get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        # Every label of the level, in the tree's order (lineage by lineage, most cells
        # first); cells without a label at this level are Scanpy's grey "NA", last.
        in_tree = table.loc[table["level"] == level, level]
        assert labels == [*in_tree[in_tree != "unassigned"].unique(), "NA"]
        assert set(labels) == {*leveled.obs[column].cat.categories, "NA"}
        handles = [to_hex(h.get_facecolor()[0]) for h in legend.legend_handles]
        assert handles[:-1] == [colours[level][label] for label in labels[:-1]]
        # Each cell is drawn in its label's colour; those without one in grey.
        expected = Counter(
            colours[level][label] if isinstance(label, str) else "#d3d3d3"
            for label in leveled.obs[column]
        )
        assert drawn_colours(ax) == expected
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "myeloid cell",
        "T cell",
        "B cell",
        "NA",
    ]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()][:3] == [
        "dendritic cell",
        "monocyte",
        "CD4+ T cell",
    ]
    axes[0].figure.savefig(tmp_path / "levels.png", dpi=80)

    axes = cassia_sc.pl.levels(leveled, legend_loc="on data", show=False)
    assert [ax.get_legend() for ax in axes] == [None] * 3
    on_data = {t.get_text() for t in axes[1].texts}
    assert on_data == {*leveled.obs[COLUMNS["detailed"]].cat.categories, "NA"}


def test_finer_labels_are_shades_of_their_lineage(leveled):
    colours = level_colours(leveled)
    table = level_counts(leveled)
    for level in ("detailed", "very_detailed"):
        rows = table[(table["level"] == level) & (table[level] != "unassigned")]
        for lineage, members in rows.groupby("broad"):
            if lineage == "unassigned":
                continue
            parent = colours["broad"][lineage]
            shades = [colours[level][label] for label in members[level]]
            # Near the lineage's hue, and each of its own lightness.
            assert all(hue_distance(shade, parent) < 0.06 for shade in shades)
            assert len({round(lightness(s), 2) for s in shades}) == len(shades)
    # In the tree's order siblings run dark to light, and so do their children:
    # dendritic cells (the larger) are darker than monocytes, and so are their subtypes.
    detailed, very = colours["detailed"], colours["very_detailed"]
    assert lightness(detailed["dendritic cell"]) < lightness(detailed["monocyte"])
    assert lightness(very["conventional dendritic cell type 1"]) < lightness(
        very["classical monocyte"]
    )
    # The first level in Scanpy's first colours; unlabelled cells grey at every level.
    assert colours["broad"] == {
        "B cell": "#1f77b4",
        "T cell": "#ff7f0e",
        "myeloid cell": "#2ca02c",
        "unassigned": "#d3d3d3",
    }
    assert colours["broad"]["unassigned"] == colours["detailed"]["unassigned"] == "#d3d3d3"


def test_the_users_broad_colours_lead_and_palette_overrides(leveled):
    column = COLUMNS["broad"]
    leveled.uns[f"{column}_colors"] = ["#9467bd", "#d62728", "#17becf"]
    colours = level_colours(leveled)
    assert colours["broad"]["T cell"] == "#d62728"
    assert hue_distance(colours["detailed"]["CD4+ T cell"], "#d62728") < 0.06
    axes = cassia_sc.pl.levels(leveled, show=False)
    assert list(leveled.uns[f"{column}_colors"]) == ["#9467bd", "#d62728", "#17becf"]
    assert drawn_colours(axes[0])["#d62728"] == 219  # the T cells

    axes = cassia_sc.pl.levels(leveled, palette=["#000000"] * 12, show=False)
    assert set(drawn_colours(axes[1])) == {"#000000", "#d3d3d3"}


def test_many_long_labels_keep_their_legend_beside_their_own_panel(leveled, tmp_path):
    # 25 very detailed labels of up to 48 characters: Scanpy puts them in two columns.
    clusters = leveled.obs["louvain"].astype(str)
    detailed = leveled.obs[COLUMNS["detailed"]].astype(object).fillna("unknown")
    leveled.obs[COLUMNS["very_detailed"]] = pd.Categorical(
        detailed + " subtype of cluster " + clusters + " in " + leveled.obs["phase"].astype(str)
    )
    n_labels = leveled.obs[COLUMNS["very_detailed"]].nunique()
    assert n_labels > 20
    fig = cassia_sc.pl.levels(leveled, return_fig=True)
    assert isinstance(fig, Figure)
    fig.canvas.draw()  # lays the figure out
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(axes) == 3
    boxes = [ax.get_legend().get_window_extent(renderer) for ax in axes]
    assert len(axes[2].get_legend().get_texts()) == n_labels
    for i, (ax, box) in enumerate(zip(axes, boxes, strict=True)):
        assert box.x0 >= ax.get_window_extent(renderer).x1  # right of its own cells
        assert box.x1 <= fig.bbox.x1 + 1  # inside the figure
        if i + 1 < len(axes):  # and left of the next panel, its axis label included
            assert box.x1 < axes[i + 1].get_tightbbox(renderer).x0
    # All three panels are drawn at one size.
    sizes = {round(ax.get_window_extent(renderer).width) for ax in axes}
    assert max(sizes) - min(sizes) <= 1
    fig.savefig(tmp_path / "levels_many.png", dpi=60)


def test_counts_of_the_tree(leveled):
    table = level_counts(leveled)
    assert list(table.columns) == [
        "level",
        "broad",
        "detailed",
        "very_detailed",
        "n_cells",
        "share",
    ]
    broad = table[table["level"] == "broad"]
    # Most cells first, the unlabelled (cluster 10, which failed) last.
    assert list(zip(broad["broad"], broad["n_cells"], strict=True)) == [
        ("myeloid cell", 371),
        ("T cell", 219),
        ("B cell", 97),
        ("unassigned", 13),
    ]
    assert broad["n_cells"].sum() == leveled.n_obs
    assert broad["share"].tolist() == pytest.approx([371 / 700, 219 / 700, 97 / 700, 13 / 700])
    row = table.set_index(["level", "broad", "detailed", "very_detailed"])["n_cells"]
    assert row["detailed", "myeloid cell", "dendritic cell", ""] == 117 + 54 + 42
    # Cluster 6's dendritic cells have no finer label: unassigned under their parent.
    assert row["very_detailed", "myeloid cell", "dendritic cell", "unassigned"] == 42
    assert row["very_detailed", "T cell", "CD4+ T cell", "naive CD4+ T cell"] == 19
    # No B cell has a very detailed label: B cells' detailed labels are leaves.
    assert table[table["broad"] == "B cell"]["level"].tolist() == ["broad", "detailed", "detailed"]
    # The unlabelled cells are one row: no unassigned children of unassigned.
    assert table[table["broad"] == "unassigned"]["level"].tolist() == ["broad"]
    # Every parent's children add up to it, and the leaves to all cells.
    depth = table["level"].map({"broad": 0, "detailed": 1, "very_detailed": 2}).tolist()
    n_cells = table["n_cells"].tolist()
    for i, d in enumerate(depth):
        children = []
        for j in range(i + 1, len(depth)):
            if depth[j] <= d:
                break
            if depth[j] == d + 1:
                children.append(n_cells[j])
        assert not children or sum(children) == n_cells[i], table.iloc[i]
    leaves = [i for i, d in enumerate(depth) if i + 1 == len(depth) or depth[i + 1] <= d]
    assert sum(n_cells[i] for i in leaves) == leveled.n_obs


def test_the_tree_draws_each_label_with_its_cells_and_colour(leveled, tmp_path):
    ax = cassia_sc.pl.level_tree(leveled, show=False)
    table = level_counts(leveled)
    colours = level_colours(leveled)
    rows: dict[int, list[str]] = {}
    for text in ax.texts:
        rows.setdefault(round(text.get_position()[1]), []).append(text.get_text())
    assert rows[0] == ["cassia: cell types by level (700 cells)"]
    assert rows[1] == ["cells", "share"]
    swatches = {
        round(p.get_y() + p.get_height() / 2): to_hex(p.get_facecolor())
        for p in ax.patches
        if p.get_width() < 10  # the squares before the labels, not the bars
    }
    for i, row in table.iterrows():
        label = row[row["level"]]
        assert rows[i + 2] == [label, f"{row['n_cells']:,}", f"{100 * row['share']:.1f} %"]
        assert swatches[i + 2] == colours[row["level"]][label]
    assert len(rows) == len(table) + 2
    # Each bar is as long as its share of cells, on a track of 100 %.
    tracks = [p for p in ax.patches if to_hex(p.get_facecolor()) == "#f0f0f0"]
    bars = [p for p in ax.patches if p.get_width() >= 10 and p not in tracks]
    myeloid = bars[0].get_width() / tracks[0].get_width()
    assert myeloid == pytest.approx(371 / 700)
    ax.figure.savefig(tmp_path / "level_tree.png", dpi=100)

    fig = cassia_sc.pl.level_tree(leveled, levels=("broad", "very_detailed"), return_fig=True)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "CD4+ T cell" not in labels and "regulatory T cell" in labels
    _, own = plt.subplots(figsize=(6, 6))
    assert cassia_sc.pl.level_tree(leveled, ax=own, show=False) is own


def test_two_levels_and_missing_columns(leveled):
    del leveled.obs[COLUMNS["very_detailed"]]
    with pytest.raises(cassia_sc.CassiaError, match=r"cassia_celltype_very_detailed.*tl\.levels"):
        cassia_sc.pl.levels(leveled, show=False)
    with pytest.raises(cassia_sc.CassiaError, match=r"tl\.levels"):
        cassia_sc.pl.level_tree(leveled, show=False)
    with pytest.raises(cassia_sc.CassiaError, match=r"tl\.levels"):
        level_counts(leveled, key="other")
    axes = cassia_sc.pl.levels(leveled, levels=("broad", "detailed"), show=False)
    assert len(axes) == 2
    assert level_counts(leveled, levels=["broad", "detailed"])["level"].nunique() == 2
    with pytest.raises(cassia_sc.CassiaError, match="among"):
        cassia_sc.pl.levels(leveled, levels=("broad", "fine"), show=False)
    with pytest.raises(cassia_sc.CassiaError, match="has no 'X_tsne'"):
        cassia_sc.pl.levels(leveled, levels=("broad",), basis="tsne", show=False)
    with pytest.raises(cassia_sc.CassiaError, match="one title per level"):
        cassia_sc.pl.levels(leveled, levels=("broad",), title="one", show=False)


def test_a_label_under_two_parents_takes_the_main_ones_colour(leveled):
    # "proliferating cell" is under T cell in cluster 9 (19 cells), myeloid in 7 (35).
    by_cluster = dict(BY_CLUSTER)
    by_cluster["9"] = ("T cell", "proliferating cell", None)
    by_cluster["7"] = ("myeloid cell", "proliferating cell", None)
    set_levels(leveled, by_cluster)
    table = level_counts(leveled)
    shared = table[table["detailed"] == "proliferating cell"]
    assert shared[["broad", "n_cells"]].values.tolist() == [["myeloid cell", 35], ["T cell", 19]]
    colours = level_colours(leveled)
    assert hue_distance(colours["detailed"]["proliferating cell"], "#2ca02c") < 0.06
    assert np.isclose(table[table["level"] == "broad"]["n_cells"].sum(), 700)
