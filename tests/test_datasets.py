"""The bundled example sets: CASSIA's three under CASSIA's names, and our pbmc68k ones.

The facts asserted about CASSIA's sets (shapes, names, first and last rows, SHA-256) were
read from CASSIA 1.4.0's own files with CASSIA's reader (``pandas.read_csv``, ``Unnamed:``
columns dropped); these tests need no copy of CASSIA.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import subprocess
import sys
from importlib import resources

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import cassia_sc
from cassia_sc import MarkerError
from cassia_sc.datasets import (
    EXAMPLE_RECIPE,
    list_available_markers,
    pbmc68k_example,
    pbmc68k_example_path,
)

LARGE_INTESTINE = [
    "monocyte (inaccurate annotation)",
    "plasma cell",
    "cd8-positive, alpha-beta t cell (mixed)",
    "transit amplifying cell of large intestine",
    "intestinal enteroendocrine cell",
    "intestinal crypt stem cell",
]
FIND_ALL_MARKERS = ["p_val", "avg_log2FC", "pct.1", "pct.2", "p_val_adj", "cluster", "gene"]
#: SHA-256 of CASSIA 1.4.0's data/unprocessed.csv.
UNPROCESSED_SHA256 = "5113cbd9e76e47a3fdb327a7d1d36240212dc41d178299594b2daa8e26ff06c3"


def test_processed_is_cassias_simplified_example_and_the_default():
    processed = cassia_sc.loadmarker("processed")

    assert processed.shape == (6, 2)
    assert processed.columns.tolist() == ["Broad.cell.type", "Top.Markers"]
    assert processed["Broad.cell.type"].tolist() == LARGE_INTESTINE
    assert processed["Top.Markers"][1].split(",")[:3] == ["IGLL5", "IGLV6-57", "JCHAIN"]
    assert processed["Top.Markers"][0].split(",")[:3] == ["NKAIN3", "SPP1", "CDH19"]
    assert processed["Top.Markers"].str.split(",").map(len).tolist() == [50] * 6
    # CASSIA's default, as in CASSIA's signature.
    assert inspect.signature(cassia_sc.loadmarker).parameters["marker_type"].default == "processed"
    pd.testing.assert_frame_equal(cassia_sc.loadmarker(), processed)


def test_unprocessed_is_cassias_find_all_markers_table():
    unprocessed = cassia_sc.loadmarker("unprocessed")

    assert unprocessed.shape == (31313, 7)
    assert unprocessed.columns.tolist() == FIND_ALL_MARKERS  # the row-name column dropped
    assert pd.unique(unprocessed["cluster"]).tolist() == LARGE_INTESTINE
    assert unprocessed.groupby("cluster", sort=False).size().tolist() == [
        4411,
        3863,
        4696,
        7448,
        3360,
        7535,
    ]
    first, last = unprocessed.iloc[0], unprocessed.iloc[-1]
    assert (first["cluster"], first["gene"], first["avg_log2FC"], first["pct.1"]) == (
        "monocyte (inaccurate annotation)",
        "CDH19",
        8.86571097085819,
        0.996,
    )
    assert (last["cluster"], last["gene"], last["p_val_adj"]) == (
        "intestinal crypt stem cell",
        "YWHAH",
        1.0,
    )
    assert unprocessed[FIND_ALL_MARKERS[:5]].dtypes.eq(float).all()


def test_subcluster_results_names_its_subclusters_as_strings():
    subclusters = cassia_sc.loadmarker("subcluster_results")

    assert subclusters.shape == (2023, 7)
    assert subclusters.columns.tolist() == FIND_ALL_MARKERS
    # CASSIA's reader gives 0 to 5 as integers; ours are strings, as in every other set.
    assert pd.unique(subclusters["cluster"]).tolist() == ["0", "1", "2", "3", "4", "5"]
    assert subclusters.groupby("cluster").size().tolist() == [97, 427, 111, 1002, 189, 197]
    first = subclusters.iloc[0]
    assert (first["gene"], first["p_val"], first["avg_log2FC"]) == ("IL7R", 2.95e-71, 0.769088768)
    assert subclusters["gene"].iloc[-1] == "ACAA1"
    assert subclusters.loc[subclusters["cluster"] == "2", "gene"].head(2).tolist() == [
        "GZMK",
        "GZMH",
    ]


def test_the_compressed_file_is_cassias_file_byte_for_byte():
    packaged = resources.files("cassia_sc.data").joinpath("cassia_unprocessed.csv.gz")
    raw = packaged.read_bytes()

    assert raw[4:8] == b"\0\0\0\0"  # mtime 0: the same bytes on every build
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == UNPROCESSED_SHA256


def test_every_listed_set_loads_and_an_unknown_name_lists_them():
    names = list_available_markers()

    assert names == [
        "processed",
        "unprocessed",
        "subcluster_results",
        "pbmc68k_processed",
        "pbmc68k_unprocessed",
    ]
    for name in names:
        assert not cassia_sc.loadmarker(name).empty
    with pytest.raises(MarkerError) as raised:
        cassia_sc.loadmarker("raw")
    message = str(raised.value)
    assert "'raw'" in message and all(repr(name) in message for name in names)
    # "truth" is a file of ours, not a marker set.
    with pytest.raises(ValueError, match="choose one of"):
        cassia_sc.loadmarker("truth")


def test_our_pbmc68k_sets_keep_their_names_and_string_clusters():
    processed = cassia_sc.loadmarker("pbmc68k_processed")
    unprocessed = cassia_sc.loadmarker("pbmc68k_unprocessed")

    assert processed.columns.tolist() == ["cluster", "markers"]
    assert processed["cluster"].tolist() == [str(i) for i in range(11)]
    assert unprocessed.columns.tolist() == FIND_ALL_MARKERS
    assert pd.unique(unprocessed["cluster"]).tolist() == [str(i) for i in range(11)]


def test_batch_dry_runs_on_cassias_sets_give_cassias_cluster_names():
    options = {
        "tissue": "large intestine",
        "species": "human",
        "model": "m",
        "dry_run": True,
        "progress": False,
    }
    processed = cassia_sc.loadmarker("processed")
    from_processed = cassia_sc.run_batch(processed, **options)
    from_unprocessed = cassia_sc.run_batch(cassia_sc.loadmarker("unprocessed"), **options)

    assert [c.cluster for c in from_processed.clusters] == LARGE_INTESTINE
    assert [c.cluster for c in from_unprocessed.clusters] == LARGE_INTESTINE
    # CASSIA's simplified set is its FindAllMarkers set's top 50: filtering and ranking the
    # FindAllMarkers table here gives exactly the same genes, in the same order.
    for planned, genes in zip(from_unprocessed.clusters, processed["Top.Markers"], strict=True):
        assert list(planned.markers) == genes.split(",")
    assert from_processed.clusters[1].markers[:3] == ["IGLL5", "IGLV6-57", "JCHAIN"]

    subclusters = cassia_sc.run_batch(cassia_sc.loadmarker("subcluster_results"), **options)
    assert [c.cluster for c in subclusters.clusters] == ["0", "1", "2", "3", "4", "5"]


# -- the bundled .h5ad example: built once in the cache folder, by the tutorial's recipe -----


def test_the_example_file_holds_the_tutorials_ranking(tmp_path):
    path = pbmc68k_example_path(cache_dir=tmp_path)
    assert path.parent.parent == tmp_path and path.suffix == ".h5ad"
    cached = ad.read_h5ad(path)
    fresh = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(fresh, "louvain", method="wilcoxon", pts=True)

    ranking, expected = cached.uns["rank_genes_groups"], fresh.uns["rank_genes_groups"]
    assert ranking["params"]["groupby"] == "louvain"
    assert ranking["params"]["method"] == "wilcoxon"
    assert ranking["names"].dtype.names == tuple(str(i) for i in range(11))
    for group in ("0", "3", "10"):
        assert ranking["names"][group].tolist() == expected["names"][group].tolist()
        np.testing.assert_allclose(
            ranking["logfoldchanges"][group], expected["logfoldchanges"][group], rtol=1e-6
        )
    pd.testing.assert_frame_equal(ranking["pts"], expected["pts"])
    assert int(cached.uns["cassia_sc_example"]["recipe"]) == EXAMPLE_RECIPE
    # The data set itself is Scanpy's, untouched.
    np.testing.assert_array_equal(cached.X, fresh.X)
    pd.testing.assert_frame_equal(cached.obs, fresh.obs)


def test_the_example_file_is_built_once_and_rebuilt_for_another_recipe(tmp_path):
    path = pbmc68k_example_path(cache_dir=tmp_path)
    first = path.stat()
    again = pbmc68k_example_path(cache_dir=tmp_path)
    assert again == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    with h5py.File(path, "r+") as file:  # a file an older recipe wrote
        file["uns/cassia_sc_example/recipe"][()] = EXAMPLE_RECIPE - 1
    pbmc68k_example_path(cache_dir=tmp_path)
    assert path.stat().st_ino != first.st_ino
    assert int(ad.read_h5ad(path).uns["cassia_sc_example"]["recipe"]) == EXAMPLE_RECIPE
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_torn_example_file_is_rebuilt(tmp_path):
    path = pbmc68k_example_path(cache_dir=tmp_path)
    path.write_bytes(b"not hdf5")
    assert pbmc68k_example_path(cache_dir=tmp_path) == path
    assert ad.read_h5ad(path).uns["rank_genes_groups"]["params"]["groupby"] == "louvain"


def test_the_example_in_memory_is_a_copy_of_the_cached_file(tmp_path):
    adata = pbmc68k_example(cache_dir=tmp_path)
    path = pbmc68k_example_path(cache_dir=tmp_path)
    before = path.stat().st_mtime_ns
    adata.obs["edited"] = 1
    assert "edited" not in ad.read_h5ad(path).obs and path.stat().st_mtime_ns == before
    assert adata.uns["rank_genes_groups"]["params"]["groupby"] == "louvain"


@pytest.mark.slow
def test_two_processes_building_the_example_at_once_leave_one_whole_file(tmp_path):
    build = (
        "import sys; from cassia_sc.datasets import pbmc68k_example_path as build; "
        "build(cache_dir=sys.argv[1])"
    )
    runs = [subprocess.Popen([sys.executable, "-c", build, str(tmp_path)]) for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    path = pbmc68k_example_path(cache_dir=tmp_path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert ad.read_h5ad(path).uns["rank_genes_groups"]["params"]["groupby"] == "louvain"
