"""Nothing lost, nothing leaked, no hang: what the command line and the writers do to files.

Keys that would overwrite foreign data, two runs on one file, permissions and leftovers,
targets that cannot be written, spreadsheet and terminal injection, lists with commas, and
sizes without bound; every model call goes to the local scripted server.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from conftest import ScriptedLLM, cli, command, digest
from llm_server import Reply
from scripted_model import annotation_reply, signature

import cassia_sc
from cassia_sc._io import atomic_write_text
from cassia_sc.cli import main
from cassia_sc.errors import KeyAddedError
from cassia_sc.export.adata import label_column_names, label_columns
from cassia_sc.h5ad import locked, write_annotation
from cassia_sc.results import BatchResult, ClusterResult

EXAMPLE = cassia_sc.loadmarker("pbmc68k_processed")


def markers_file(folder: Path, names: list[str]) -> Path:
    """A two-column marker table: the example's first clusters' genes, under ``names``."""
    table = pd.DataFrame({"cluster": names, "markers": EXAMPLE["markers"][: len(names)]})
    path = folder / "markers.csv"
    table.to_csv(path, index=False)
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("cassia-sc: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ 1. key_added is checked


@pytest.mark.parametrize(
    ("key_added", "message"),
    [
        ("", "--key-added must be a name, not ''"),
        ("rank_genes_groups", "would replace uns['rank_genes_groups'], which cassia_sc did not"),
        ("neighbors", "would replace uns['neighbors']"),
        ("louvain_colors", "would replace uns['louvain_colors']"),
        ("pca", "would replace uns['pca']"),
        ("a/b", "must not contain '/'"),
    ],
)
def test_a_key_added_that_would_replace_foreign_data_is_refused_before_any_call(
    key_added, message, h5ad, llm, capsys
):
    original = digest(h5ad)
    code = main(cli(llm, "annotate", str(h5ad), "--key-added", key_added, "--quiet"))
    err = capsys.readouterr().err
    assert code == 2 and message in one_error_line(err)
    assert digest(h5ad) == original and llm.server.request_count == 0


def test_obs_columns_not_ours_are_refused_and_our_own_are_replaced(pbmc, llm, tmp_path, capsys):
    pbmc.obs["mine_celltype"] = "hand-made"  # a column of the user's, named like ours
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    original = digest(path)
    assert main(cli(llm, "annotate", str(path), "--key-added", "mine", "--quiet")) == 2
    assert "would replace obs columns ['mine_celltype']" in one_error_line(capsys.readouterr().err)
    assert digest(path) == original and llm.server.request_count == 0
    # A second run under one key replaces what the first wrote: those columns are ours.
    for _ in range(2):
        assert main(cli(llm, "annotate", str(path), "--key-added", "again", "--quiet")) == 0
    assert (ad.read_h5ad(path).obs["again_celltype"].astype(str).str.startswith("type ")).all()


def test_the_python_api_refuses_the_same_keys(pbmc, llm):
    before = {name: repr(value) for name, value in pbmc.uns.items()}
    options = {"tissue": "blood", "species": "human", **llm.options()}
    for key_added in ("", "rank_genes_groups", "louvain", "a/b"):
        with pytest.raises(KeyAddedError):
            cassia_sc.tl.annotate(pbmc, key_added=key_added, **options)
    assert {name: repr(value) for name, value in pbmc.uns.items()} == before
    assert llm.server.request_count == 0
    pbmc.obs["mine_subtype"] = "hand-made"
    with pytest.raises(KeyAddedError, match=r"obs columns \['mine_subtype'\]"):
        cassia_sc.tl.annotate(pbmc, key_added="mine", **options)


def test_every_obs_column_written_is_one_the_check_knows():
    cluster = ClusterResult("0", ["CD3D"], "ok", main_cell_type="T cell", agreement=0.5)
    cluster.ontology_term_id = "CL:0000084"
    cluster.set("score", 80.0)
    cluster.set("boosted", True)
    cluster.set("initial_cell_type", "NK cell")
    columns = label_columns(pd.Series(["0", "0"]), BatchResult([cluster]), key_added="k")
    assert set(columns) <= set(label_column_names("k"))


# --------------------------------------------------------------- 2. one writer at a time


@pytest.mark.slow
def test_a_second_run_waits_for_the_first_and_keeps_its_entries(h5ad, llm, tmp_path):
    """The test is "the first run": it read the file, holds the lock, writes, releases."""
    first_read = tmp_path / "as-the-first-run-read-it.h5ad"
    shutil.copyfile(h5ad, first_read)
    n_cells = ad.read_h5ad(h5ad).n_obs
    with locked(h5ad):
        second = subprocess.Popen(
            [sys.executable, "-m", "cassia_sc", *cli(llm, "annotate", str(h5ad), "--quiet")],
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(300, second.kill)  # a hang fails the test, not the suite
        watchdog.start()
        # Without the lock the second run writes without waiting; the first then writes
        # over it what it had read before: the second's labels are lost.
        waiting = next((line for line in second.stderr if "Waiting for" in line), None)
        write_annotation(
            first_read,
            h5ad,
            obs_columns={"first_celltype": pd.Categorical(["T cell"] * n_cells)},
            uns_key="first",
            uns_value={"note": "the first run"},
        )
    try:
        assert second.wait() == 0, second.stderr.read()
    finally:
        watchdog.cancel()
    assert waiting is not None and "another cassia-sc" in waiting
    both = ad.read_h5ad(h5ad)
    assert {"first", "cassia"} <= set(both.uns)
    assert {"first_celltype", "cassia_celltype"} <= set(both.obs)
    assert not list(tmp_path.glob(".pbmc.h5ad.*"))  # no lock file or temporary file left


def test_no_wait_stops_at_once_when_another_run_writes_the_file(h5ad, llm, capsys):
    original = digest(h5ad)
    with locked(h5ad):
        code = main(cli(llm, "annotate", str(h5ad), "--no-wait", "--quiet"))
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "pbmc.h5ad is being written by another cassia-sc" in line
    assert digest(h5ad) == original and llm.server.request_count == 0
    assert main(cli(llm, "annotate", str(h5ad), "--no-wait", "--quiet")) == 0  # free again


# ----------------------------------------------------- 8. permissions, and what is left over


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_mode_the_umask_allows(llm, tmp_path, umask_022):
    markers = markers_file(tmp_path, ["0", "1"])
    args = cli(llm, "batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet")
    assert main(args) == 0
    written = sorted(tmp_path.glob("run_*"))
    assert len(written) == 5 and {mode(p) for p in written} == {0o644}
    entries = list(llm.cache_dir.glob("*/*.json"))
    assert entries and {mode(p) for p in entries} == {0o644}
    os.umask(0o002)  # a shared group folder
    atomic_write_text(tmp_path / "group.txt", "shared")
    assert mode(tmp_path / "group.txt") == 0o664


def test_an_edit_keeps_the_files_mode_and_a_new_file_follows_the_umask(h5ad, llm, umask_022):
    h5ad.chmod(0o640)
    target = h5ad.with_name("new.h5ad")
    assert main(cli(llm, "annotate", str(h5ad), "--output", str(target), "--quiet")) == 0
    assert mode(target) == 0o644
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 0
    assert mode(h5ad) == 0o640


def test_temporary_files_left_by_killed_writes_are_removed(h5ad, llm, tmp_path, caplog):
    two_days_ago = time.time() - 2 * 86400
    stale = tmp_path / ".pbmc.h5ad.k1ll3d01.tmp"
    stale.write_bytes(b"\0" * 2_000_000)
    os.utime(stale, (two_days_ago, two_days_ago))
    recent = tmp_path / ".pbmc.h5ad.k1ll3d02.tmp"  # no other run writes the file: ours
    recent.write_bytes(b"\0" * 1000)
    other = tmp_path / ".pbmc.h5ad.notours.txt"
    other.write_text("kept")
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 0
    assert not stale.exists() and not recent.exists() and other.exists()
    assert "Removed 2 temporary files (2.0 MB) left beside pbmc.h5ad" in caplog.text
    # Beside any other file written: those old enough to be left over, not a write in progress.
    report = tmp_path / "run_report.html"
    old, fresh = tmp_path / ".run_report.html.abc123.tmp", tmp_path / ".run_report.html.def456.tmp"
    for path in (old, fresh):
        path.write_text("half a report")
    os.utime(old, (two_days_ago, two_days_ago))
    atomic_write_text(report, "<html></html>")
    assert not old.exists() and fresh.exists()


# ------------------------------------------------------- 9. a target that cannot be written


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif Path("/sys").is_dir():  # root writes through permissions, but not into sysfs
        yield Path("/sys")
    else:
        pytest.skip("no folder that root cannot write in")


def test_a_read_only_file_is_refused_before_any_call(h5ad, llm, capsys):
    h5ad.chmod(0o444)
    original = digest(h5ad)
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "pbmc.h5ad' is read-only: make it writable (chmod u+w) or write elsewhere" in line
    assert digest(h5ad) == original and mode(h5ad) == 0o444 and llm.server.request_count == 0


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_call(
    h5ad, llm, unwritable_folder, tmp_path, capsys
):
    for args in (
        ["annotate", str(h5ad), "--output-name", str(unwritable_folder / "run")],
        ["annotate", str(h5ad), "--output", str(unwritable_folder / "out.h5ad")],
        ["batch", str(markers_file(tmp_path, ["0"])), "--output-name", f"{unwritable_folder}/r"],
        ["annotate", str(h5ad), "--output", str(tmp_path / "no-such-folder" / "out.h5ad")],
    ):
        assert main(cli(llm, *args, "--quiet")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "Cannot write in the folder" in line or "No folder" in line
    assert llm.server.request_count == 0


def _drop_root_file_powers():  # pragma: no cover - runs in the child before exec
    """Make root in the child obey file permissions, as any user does."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.slow
def test_a_read_only_folder_is_one_line_and_exit_2_from_the_shell(h5ad, llm, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = shutil.move(h5ad, folder / "pbmc.h5ad")
    folder.chmod(0o555)
    try:
        done = command(
            *cli(llm, "annotate", str(path), "--quiet"), preexec_fn=_drop_root_file_powers
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert "Cannot write in the folder" in one_error_line(done.stderr)
    assert "Permission denied" in done.stderr and llm.server.request_count == 0


def _small_files_only():  # pragma: no cover - runs in the child before exec
    """A full disk, as the child sees it: no file may grow past 200 kB (EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_paid_replies_stay_in_the_cache(h5ad, llm, tmp_path):
    original = digest(h5ad)
    done = command(*cli(llm, "annotate", str(h5ad), "--quiet"), preexec_fn=_small_files_only)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "Could not write" in line and "File too large" in line
    assert "the same command again calls no model" in line
    assert digest(h5ad) == original and not list(tmp_path.glob(".pbmc.h5ad.*"))
    paid = llm.server.request_count
    assert paid == 20
    assert main(cli(llm, "annotate", str(h5ad), "--quiet")) == 0  # room again
    assert llm.server.request_count == paid  # every reply came from the cache


# ---------------------------------------------- 11. spreadsheet cells and terminal output


def test_csv_cells_that_a_spreadsheet_would_run_are_made_inert(scripted_llm, tmp_path):
    names = ["=1+2", "-1", "@SUM(A1)", "HLA-DR+ cells"]
    labels = ['=HYPERLINK("http://x.example","open")', "+cmd|' /C calc'!A0", "-2+3", "B cell"]
    genes = {signature(EXAMPLE["markers"][i].split(", ")): i for i in range(len(names))}

    def annotator(request, markers):
        i = genes[signature(markers)]
        subtypes = ("@mention", "HLA-A-high B cell")
        return Reply(content=annotation_reply(labels[i], subtypes=subtypes, key_markers=("HLA-A",)))

    llm = scripted_llm(annotator=annotator)
    markers = markers_file(tmp_path, names)
    args = cli(llm, "batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet")
    assert main(args) == 0
    for kind in ("summary", "full"):
        with open(tmp_path / f"run_{kind}.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        assert [r["Cluster ID"] for r in rows] == ["'=1+2", "-1", "'@SUM(A1)", "HLA-DR+ cells"]
        assert [r["Predicted General Cell Type"] for r in rows] == [
            "'" + labels[0],
            "'" + labels[1],
            "'-2+3",
            "B cell",
        ]
        assert {r["Predicted Detailed Cell Type"] for r in rows} == {"'@mention, HLA-A-high B cell"}
        assert {r["Key Markers"] for r in rows} == {"HLA-A"}  # a gene name is not touched
        assert all(int(r["Prompt Tokens"]) >= 0 for r in rows)
    # What the Python API returns and what the conversations JSON holds stay as they are.
    conversations = json.loads((tmp_path / "run_conversations.json").read_text())
    assert next(iter(conversations)) == "=1+2"


def test_the_terminal_gets_no_escape_sequence(scripted_llm, tmp_path, capsys):
    clipboard = "\x1b]52;c;ZXZpbA==\x07"
    names = [f"{clipboard}clip", "\x1b[2J\x1b[31mred", "\x9b31mC1", "\u202eevil"]
    refused = signature(EXAMPLE["markers"][1].split(", "))

    def annotator(request, markers):
        if signature(markers) == refused:
            return Reply(status=400, error_message=f"{clipboard}\x1b]0;title\x07refused")
        return None

    llm = scripted_llm(annotator=annotator)
    markers = markers_file(tmp_path, names)
    assert main(cli(llm, "batch", str(markers), "--output-name", str(tmp_path / "run"))) == 3
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert not any(ch in text for ch in "\x1b\x07\x9b\u202e"), repr(text)
    assert "clip" in captured.out and "red" in captured.out and "refused" in captured.out


# --------------------------------------------------------- 12. lists survive a round trip


def test_list_items_with_commas_come_back_equal_from_an_h5ad(pbmc, scripted_llm, tmp_path):
    subtypes = ("CD4+, CD25+ regulatory T cell", "Treg")
    key_markers = ("HLA-A,B", "FOXP3")
    mixed = ("[odd] name", " spaced ")

    def annotator(request, markers):
        reply = annotation_reply("T cell", subtypes=subtypes, mixed=mixed, key_markers=key_markers)
        return Reply(content=reply)

    llm = scripted_llm(annotator=annotator)
    options = {"tissue": "blood", "species": "human", **llm.options()}
    cassia_sc.tl.annotate(pbmc, output_name=tmp_path / "run", **options)
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    back = cassia_sc.get.annotation(ad.read_h5ad(tmp_path / "pbmc.h5ad"))
    for cluster in back.clusters:
        assert cluster.sub_cell_types == list(subtypes)
        assert cluster.key_markers == list(key_markers)
        assert cluster.unsupported_markers == list(key_markers)
        assert cluster.possible_mixed_cell_types == ["[odd] name", "spaced"]  # as parsed
    summary = pd.read_csv(tmp_path / "run_summary.csv")  # CASSIA's columns as CASSIA writes
    assert set(summary["Predicted Detailed Cell Type"]) == {"CD4+, CD25+ regulatory T cell, Treg"}
    assert set(summary["Key Markers"]) == {"HLA-A,B, FOXP3"}


def test_lists_stored_the_old_way_are_still_read():
    table = pd.DataFrame(
        {"cluster": ["0"], "main_cell_type": ["B cell"], "sub_cell_types": ["naive B, memory B"]}
    )
    record = {"params": {"cassia_sc_version": "0.1"}, "results": table, "conversations": "[]"}
    assert cassia_sc.BatchResult.from_uns(record).clusters[0].sub_cell_types == [
        "naive B",
        "memory B",
    ]


# ------------------------------------------------------------------------ 14. sizes bounded


def test_a_huge_reply_is_cut_in_everything_written_and_whole_in_the_cache(
    pbmc, scripted_llm, tmp_path
):
    reasoning = "Let me think about this. " * 200_000  # 5 MB
    label = "T" * 100_000
    mixed = tuple(f"cell type {i}" for i in range(10_000))

    def annotator(request, markers):
        answer = annotation_reply(label, mixed=mixed, key_markers=tuple(markers[:2]))
        return Reply(content=reasoning + answer)

    llm = scripted_llm(annotator=annotator)
    options = {"tissue": "blood", "species": "human", **llm.options(max_workers=2)}
    cassia_sc.tl.annotate(pbmc, output_name=tmp_path / "run", **options)
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")

    for name in ("run_summary.csv", "run_full.csv", "run_conversations.json", "run_report.html"):
        assert (tmp_path / name).stat().st_size < 2_000_000, name
    record = ad.read_h5ad(tmp_path / "pbmc.h5ad").uns["cassia"]
    assert len(record["conversations"]) < 2_000_000
    cuts = set(re.findall(r"… \[cut: [^\]]*\]", record["conversations"]))
    assert "… [cut: 5.4 MB more; the reply cache holds it whole, if the run used one]" in cuts
    labels = pbmc.obs["cassia_celltype"].astype(str)
    assert labels.str.len().max() <= 200 and labels.str.contains(r"\[cut: 99.8 KB more\]").all()
    stored = record["results"]["possible_mixed_cell_types"].iloc[0]
    assert cassia_sc.fields.split_list(stored)[-1] == "… [cut: 9,801 more]"
    assert "[cut:" in (tmp_path / "run_report.html").read_text()
    biggest = max(p.stat().st_size for p in llm.cache_dir.glob("*/*.json"))
    assert biggest > 5_000_000  # the whole reply, for a re-run


def fill_cache(llm: ScriptedLLM, tmp_path: Path) -> list[Path]:
    markers = markers_file(tmp_path, ["0", "1", "2"])
    args = cli(llm, "batch", str(markers), "--output-name", str(tmp_path / "run"), "--quiet")
    assert main(args) == 0
    return sorted(llm.cache_dir.glob("*/*.json"))


def test_cache_info_and_clear_with_an_age(scripted_llm, tmp_path, capsys):
    llm = scripted_llm()
    entries = fill_cache(llm, tmp_path)
    assert len(entries) == 6
    size = sum(p.stat().st_size for p in entries)
    foreign = llm.cache_dir / "notes.txt"
    foreign.write_text("not a reply")
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(llm.cache_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Cache folder: {llm.cache_dir}" in out
    assert f"Replies: 6, {cassia_sc._io.format_size(size)}" in out
    old = time.time() - 40 * 86400
    for path in entries[:4]:
        os.utime(path, (old, old))
    assert main(["cache", "clear", "--older-than", "30d", "--cache-dir", str(llm.cache_dir)]) == 0
    assert "Removed 4 replies stored over 30 days ago" in capsys.readouterr().out
    assert sorted(llm.cache_dir.glob("*/*.json")) == entries[4:]
    assert main(["cache", "clear", "--cache-dir", str(llm.cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "Removed 2 replies" in out and "; 0 remain (0 B)" in out
    assert not list(llm.cache_dir.glob("*/*.json")) and foreign.exists()


def test_cache_clear_takes_an_age_with_a_unit(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "clear", "--older-than", "30", "--cache-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "is not an age" in capsys.readouterr().err


def test_the_cache_command_needs_no_model_and_a_default_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CASSIA_SC_CACHE_DIR", str(tmp_path / "nowhere"))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "nowhere (not created yet)" in out and "Replies: 0, 0 B" in out
