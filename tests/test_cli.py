"""The cassia-sc command: .h5ad files annotated in place or to a new file, and marker tables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import cli, digest
from llm_server import Reply
from scripted_model import signature

import cassia_sc
from cassia_sc.cli import main
from cassia_sc.h5ad import write_annotation


def test_annotate_in_place_adds_only_the_new_columns_and_entry(h5ad, llm, tmp_path, capsys):
    before = ad.read_h5ad(h5ad)
    assert main(cli(llm, "annotate", str(h5ad))) == 0

    after = ad.read_h5ad(h5ad)
    out = capsys.readouterr().out
    assert f"to {h5ad}" in out and "type CD19+ B" in out
    new = ["cassia_celltype", "cassia_subtype", "cassia_celltype_ontology_term_id"]
    assert list(after.obs.columns) == [*before.obs.columns, *new]
    pd.testing.assert_frame_equal(after.obs[before.obs.columns], before.obs)
    assert (
        after.obs["cassia_celltype"].astype(str) == "type " + after.obs["bulk_labels"].astype(str)
    ).all()
    assert after.uns["cassia"]["results"]["status"].tolist() == ["ok"] * 10
    np.testing.assert_array_equal(after.X, before.X)
    assert set(after.uns) == {*before.uns, "cassia"}
    assert not list(tmp_path.glob(".pbmc.h5ad.*"))  # no temporary file left


def test_x_is_never_read(h5ad, llm):
    with h5py.File(h5ad, "r+") as file:  # make X unreadable for anndata
        file["X"].attrs["encoding-type"] = "not-a-real-encoding"
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 0
    with h5py.File(h5ad, "r") as file:
        assert file["X"].attrs["encoding-type"] == "not-a-real-encoding"
        assert "cassia_celltype" in file["obs"] and "cassia" in file["uns"]


def test_output_leaves_the_input_untouched(h5ad, llm, tmp_path):
    original = digest(h5ad)
    target = tmp_path / "annotated.h5ad"
    code = main(cli(llm, "annotate", str(h5ad), "--output", str(target), "--key-added", "llm"))
    assert code == 0 and digest(h5ad) == original
    assert "llm_celltype" in ad.read_h5ad(target).obs


def test_the_bundled_example_by_name(scripted_llm, tmp_path, monkeypatch, capsys, caplog):
    """The example is the tutorial's: louvain clusters ranked by Wilcoxon, no log2FC warning."""
    monkeypatch.chdir(tmp_path)
    llm = scripted_llm()
    with caplog.at_level(logging.INFO, logger="cassia_sc"):
        assert main(cli(llm, "annotate", "pbmc68k_reduced", "--output-name", "pbmc")) == 0
    captured = capsys.readouterr()
    louvain = [str(i) for i in range(11)]
    annotated = ad.read_h5ad(tmp_path / "pbmc68k_reduced_annotated.h5ad")
    assert annotated.obs["cassia_celltype"].notna().all()
    assert annotated.uns["cassia"]["results"]["cluster"].tolist() == louvain
    assert annotated.uns["rank_genes_groups"]["params"]["groupby"] == "louvain"
    # Every line of the printed report names a louvain cluster, none a bulk label.
    listed = [line.split()[0] for line in captured.out.splitlines() if line.startswith("  ")]
    assert listed == louvain
    assert "log2fc" not in (captured.err + caplog.text).lower()
    assert "obs['louvain']" in caplog.text and "Monocyte" not in captured.out
    summary = pd.read_csv(tmp_path / "pbmc_summary.csv", dtype={"Cluster ID": str})
    assert summary["Cluster ID"].tolist() == louvain
    report = (tmp_path / "pbmc_report.html").read_text()
    assert '<img src="data:image/png;base64,' in report and "Monocyte" not in report
    assert sorted(p.name for p in tmp_path.glob("pbmc_*")) == [
        "pbmc_conversations.json",
        "pbmc_full.csv",
        "pbmc_record.json",
        "pbmc_report.html",
        "pbmc_summary.csv",
    ]


def test_the_bundled_example_by_louvain_leaves_the_cached_file_alone(
    scripted_llm, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cached = cassia_sc.datasets.pbmc68k_example_path()
    original = digest(cached)
    args = ["annotate", "pbmc68k_reduced", "--groupby", "louvain", "--output", "out.h5ad"]
    assert main(cli(scripted_llm(), *args, "--quiet")) == 0
    assert ad.read_h5ad(tmp_path / "out.h5ad").obs["cassia_celltype"].notna().all()
    assert digest(cached) == original and "cassia" not in ad.read_h5ad(cached).uns


def test_dry_run_calls_and_writes_nothing(h5ad, llm, capsys):
    original = digest(h5ad)
    assert main(cli(llm, "annotate", str(h5ad), "--dry-run")) == 0
    assert "Dry run: 10 clusters" in capsys.readouterr().out
    assert digest(h5ad) == original and llm.server.request_count == 0


def test_a_failed_cluster_gives_exit_status_3(h5ad, pbmc, scripted_llm):
    markers = cassia_sc.top_markers(pbmc)
    poisoned = signature(markers["Dendritic"])

    def annotator(request, genes):
        return Reply(status=400, error_message="refused") if signature(genes) == poisoned else None

    llm = scripted_llm(annotator=annotator)
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 3
    table = ad.read_h5ad(h5ad).uns["cassia"]["results"].set_index("cluster")
    assert table.loc["Dendritic", "status"] == "failed"


def test_batch_writes_cassias_files(llm, tmp_path):
    markers = tmp_path / "markers.csv"
    cassia_sc.loadmarker("pbmc68k_unprocessed").to_csv(markers, index=False)
    code = main(cli(llm, "batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet"))
    assert code == 0
    summary = pd.read_csv(tmp_path / "run_summary.csv", dtype={"Cluster ID": str})
    assert summary["Cluster ID"].tolist() == [str(i) for i in range(11)]


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (["annotate", "missing.h5ad"], "cassia-sc: error: No such file: 'missing.h5ad'.", 2),
        (
            ["annotate", "{no_rgg}"],
            "has no uns['rank_genes_groups']: run sc.tl.rank_genes_groups",
            2,
        ),
        (["annotate", "{h5ad}", "--key", "wilcoxon"], "has no uns['wilcoxon']", 2),
        (
            ["annotate", "{h5ad}", "--groupby", "cluster"],
            "--groupby 'cluster' is not a column of adata.obs",
            2,
        ),
        (["annotate", "{not_h5ad}"], "is not an HDF5 (.h5ad) file", 1),
        (
            ["batch", "missing.csv", "--output-name", "x"],
            "Marker file not found: 'missing.csv'.",
            2,
        ),
    ],
)
def test_user_mistakes_print_one_line(
    args, message, status, h5ad, pbmc, scripted_llm, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    del pbmc.uns["rank_genes_groups"]
    pbmc.write_h5ad(tmp_path / "no_rgg.h5ad")
    (tmp_path / "not.h5ad").write_text("hello")
    paths = {"no_rgg": tmp_path / "no_rgg.h5ad", "h5ad": h5ad, "not_h5ad": tmp_path / "not.h5ad"}
    args = [a.format(**paths) for a in args]
    code = main(cli(scripted_llm(), *args, "--quiet"))
    err = capsys.readouterr().err
    assert code == status  # 2: what was typed is wrong, as argparse's own usage errors
    assert message in err
    assert (
        "Traceback" not in err and len(err.strip().splitlines()) <= 2
    )  # at most a warning + the error


def test_a_missing_key_is_one_line(h5ad, tmp_path, capsys):
    code = main(["annotate", str(h5ad), "--species", "human", "--model", "m", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == (
        "cassia-sc: error: No API key for provider 'openrouter': set the environment variable "
        "OPENROUTER_API_KEY (or pass api_key= in Python)."
    )


def test_the_command_is_documented(capsys):
    # In this process: the console script's test below runs the command from the shell,
    # and the tests of test_faults_files.py run `python -m cassia_sc` and its exit status.
    with pytest.raises(SystemExit) as done:
        main(["annotate", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "examples:" in out and "--dry-run" in out and "pbmc68k_reduced" in out
    with pytest.raises(SystemExit) as wrong:
        main(["annotate"])
    assert wrong.value.code == 2 and "required" in capsys.readouterr().err


@pytest.mark.slow
def test_the_console_script_is_installed_next_to_the_interpreter():
    script = Path(sys.executable).parent / "cassia-sc"  # where pip puts it; PATH may lack it
    assert script.is_file(), f"no console script at {script}: pip install -e '.[test]'"
    done = subprocess.run(
        [str(script), "annotate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: cassia-sc annotate") and "examples:" in done.stdout


def test_a_failed_write_leaves_the_file_as_it_was(h5ad, tmp_path):
    original = digest(h5ad)
    columns = {"x_celltype": pd.Categorical(["T"] * ad.read_h5ad(h5ad).n_obs)}
    with pytest.raises(Exception, match="No method registered for writing <class 'object'>"):
        write_annotation(h5ad, h5ad, obs_columns=columns, uns_key="x", uns_value={"bad": object()})
    assert digest(h5ad) == original
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pbmc.h5ad")]
    assert "x_celltype" not in ad.read_h5ad(h5ad).obs


OTHER_PYTHON = os.environ.get("CASSIA_SC_OTHER_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not OTHER_PYTHON, reason="needs the other anndata's Python (set by .ci/run)")
def test_files_move_between_anndata_versions(llm, tmp_path):
    """A file written by the other anndata is annotated here and read back there, and back."""
    script = (
        "import sys, scanpy as sc, anndata as ad; p = sys.argv[2]\n"
        "if sys.argv[1] == 'write': sc.datasets.pbmc68k_reduced().write_h5ad(p)\n"
        "else:\n"
        "    a = ad.read_h5ad(p); t = a.uns['cassia']['results']\n"
        "    assert a.obs['cassia_celltype'].notna().all() and list(t['status']) == ['ok'] * 10\n"
        "    a.write_h5ad(p)\n"
    )
    theirs = tmp_path / "theirs.h5ad"
    subprocess.run([OTHER_PYTHON, "-c", script, "write", str(theirs)], check=True)
    assert main(cli(llm, "annotate", str(theirs), "--quiet")) == 0
    subprocess.run([OTHER_PYTHON, "-c", script, "read", str(theirs)], check=True)
    back = sc.read_h5ad(theirs)  # rewritten by the other anndata, read by ours
    assert back.obs["cassia_celltype"].notna().all()


def test_repeated_runs_from_the_shell(h5ad, scripted_llm):
    from collections import Counter

    from scripted_model import annotation_reply

    seen: Counter[str] = Counter()

    def annotator(request, genes):
        seen[signature(genes)] += 1
        main = "B cell" if seen[signature(genes)] % 3 else "T cell"  # the third run differs
        return Reply(content=annotation_reply(main, key_markers=tuple(genes[:1])))

    llm = scripted_llm(annotator=annotator)
    args = cli(llm, "annotate", str(h5ad), "--n-runs", "3", "--temperature", "0.7", "--quiet")
    assert main(args) == 0
    assert llm.server.request_count == 3 * 10 * 2
    annotated = ad.read_h5ad(h5ad)
    assert annotated.obs["cassia_agreement"].round(3).unique().tolist() == [round(2 / 3, 3)]
    assert (annotated.obs["cassia_celltype"] == "B cell").all()
    assert annotated.uns["cassia"]["uncertainty"]["answers"].unique().tolist() == [
        "B cell; B cell; T cell"
    ]
