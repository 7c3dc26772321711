"""The command line speaks every option of the Python functions: repeated runs, ranking."""

from __future__ import annotations

import anndata as ad
import pytest
from scripted_model import signature

import cassia_sc
from cassia_sc.cli import main


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
