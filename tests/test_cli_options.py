"""The command line speaks every option of the Python functions: repeated runs, ranking."""

from __future__ import annotations

import argparse

import anndata as ad
import pytest
from conftest import cli
from scripted_model import signature

import cassia_sc
from cassia_sc.cli import build_parser, main


def test_models_agreement_threshold_and_ascending_reach_the_run(pbmc, scripted_llm, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    markers = cassia_sc.top_markers(pbmc)
    llm = scripted_llm({signature(g): f"type {c}" for c, g in markers.items()})
    code = main(
        [
            "annotate",
            str(path),
            "--species",
            "human",
            "--tissue",
            "blood",
            "--models",
            "model-a",
            "model-b",
            "--agreement-threshold",
            "0.9",
            "--no-ascending",
            "--provider",
            llm.base_url,
            "--cache-dir",
            str(llm.cache_dir),
            "--quiet",
        ]
    )
    asked = {r.model for r in llm.server.requests}
    assert code == 0 and asked == {"model-a", "model-b"}
    annotated = ad.read_h5ad(path)
    params = annotated.uns["cassia"]["params"]
    assert params["models"] == "model-a, model-b" and params["runs"] == 2
    assert params["agreement_threshold"] == 0.9 and bool(params["ascending"]) is False
    assert (annotated.obs["cassia_agreement"] == 1.0).all()


def test_a_model_is_required_unless_models_are_given(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["annotate", "pbmc68k_reduced", "--species", "human"])
    assert exit_.value.code == 2
    assert "--model is required (or --models for annotate)" in capsys.readouterr().err


# ------------------------------------------------------------ errors in the command's words


@pytest.fixture
def marker_csv(tmp_path):
    path = tmp_path / "markers.csv"
    cassia_sc.loadmarker("pbmc68k_unprocessed").to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        (
            "batch",
            ["--celltype-column", "nope"],
            "markers.csv: --celltype-column 'nope' is not a column of the marker table",
        ),
        ("batch", ["--n-genes", "0"], "cassia-sc: error: --n-genes must be a positive integer"),
        ("annotate", ["--max-workers", "0"], "cassia-sc: error: --max-workers must be a positive"),
        ("annotate", ["--groupby", "nope"], "--groupby 'nope' is not a column of adata.obs"),
    ],
)
def test_a_bad_value_names_the_flag_and_is_a_usage_error(
    command, extra, message, h5ad, marker_csv, scripted_llm, tmp_path, capsys
):
    llm = scripted_llm()
    target = str(marker_csv) if command == "batch" else str(h5ad)
    args = cli(llm, command, target, "--output-name", str(tmp_path / "run"), *extra, "--quiet")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    # Python's spelling is gone, and nothing was asked of the model
    # (a column named n_genes in the message's list of obs columns stays as it is)
    assert "=" not in err and "n_genes must" not in err and "max_workers must" not in err
    assert llm.server.request_count == 0


def test_a_missing_api_key_stays_an_error_not_a_usage_error(h5ad, capsys, monkeypatch):
    for name in ("OPENROUTER_API_KEY", "CASSIA_API_KEY", "CUSTOMIZED_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    code = main(["annotate", str(h5ad), "--species", "human", "--model", "m", "--quiet"])
    # The Python API's own advice ("api_key=") is no flag of the command: left as it is.
    assert code == 1 and "pass api_key= in Python" in capsys.readouterr().err


def test_an_empty_marker_file_is_named(tmp_path, scripted_llm, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code = main(cli(scripted_llm(), "batch", str(empty), "--output-name", "x", "--quiet"))
    err = capsys.readouterr().err
    assert code == 2 and f"{empty} is empty" in err
    assert "No columns to parse" not in err


# ------------------------------------------------------------------------------------- help


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize("name", ["annotate", "batch"])
def test_every_flag_has_help_and_shows_its_default(name):
    parser = _subcommands()[name]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        shown = _help_of(parser, action)
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if action.default is not None and action.default is not False:
            assert str(action.default) in shown.split(action.option_strings[-1], 1)[-1], shown
    for flag, default in [("--temperature", "0.0"), ("--max-retries", "3")]:
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert f"(default: {default})" in _help_of(parser, action)


def test_help_groups_examples_and_retries_are_per_subcommand():
    commands = _subcommands()
    for name, parser in commands.items():
        titles = [group.title for group in parser._action_groups]
        assert len(titles) == len(set(titles)), f"{name}: {titles}"
    required = {
        name: {
            a.option_strings[0]
            for g in commands[name]._action_groups
            if g.title == "required"
            for a in g._group_actions
        }
        for name in ("annotate", "batch")
    }
    assert required == {
        "annotate": {"--species"},
        "batch": {"--species", "--model", "--output-name"},
    }
    assert all(
        a.required
        for g in commands["batch"]._action_groups
        if g.title == "required"
        for a in g._group_actions
    )
    annotate, batch = commands["annotate"].format_help(), commands["batch"].format_help()
    assert "cassia-sc batch " not in annotate and "cassia-sc annotate " in annotate
    assert "cassia-sc annotate " not in batch and "cassia-sc batch " in batch
    retries = {
        name: _help_of(parser, next(a for a in parser._actions if a.dest == "max_retries"))
        for name, parser in commands.items()
        if name not in ("cache", "jobs")
    }
    assert "as in tl.annotate" in retries["annotate"]
    assert "as in run_batch; not CASSIA's runCASSIA_batch meaning" in retries["batch"]
