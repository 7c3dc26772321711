"""What the Python functions say when they are called wrongly: the fix is in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_server import Reply

import cassia_sc


def test_an_unknown_option_names_the_tool_and_the_closest_option(pbmc):
    with pytest.raises(TypeError, match=r"tl\.annotate.*'modle'.*did you mean 'model'") as error:
        cassia_sc.tl.annotate(pbmc, tissue="blood", species="human", modle="m")
    assert "run_batch" not in str(error.value)
    # A misspelt tissue is the typo, not a missing tissue.
    with pytest.raises(TypeError, match=r"'tisue'.*did you mean 'tissue'"):
        cassia_sc.tl.annotate(pbmc, tisue="blood", species="human", model="m")
    # score and boost forward their options too; pbmc holds no annotation, which a typo
    # must not hide behind.
    with pytest.raises(TypeError, match=r"tl\.score.*did you mean 'score_model'"):
        cassia_sc.tl.score(pbmc, score_modle="m")
    with pytest.raises(TypeError, match=r"tl\.boost.*did you mean 'boost_rounds'"):
        cassia_sc.tl.boost(pbmc, boost_round=2)
    with pytest.raises(TypeError, match=r"tl\.levels.*did you mean 'temperature'"):
        cassia_sc.tl.levels(pbmc, method="model", temprature=0.5)


@pytest.mark.parametrize("path", ["pbmc.h5ad", Path("pbmc.h5ad")])
def test_a_path_instead_of_an_anndata_says_to_read_it(path):
    with pytest.raises(TypeError) as error:
        cassia_sc.tl.annotate(path, tissue="blood", species="human", model="m")
    message = str(error.value)
    assert "\n" not in message
    assert "sc.read_h5ad('pbmc.h5ad')" in message and "cassia-sc annotate pbmc.h5ad" in message


def test_another_object_instead_of_an_anndata_is_named(pbmc):
    with pytest.raises(TypeError, match="not a DataFrame"):
        cassia_sc.tl.annotate(pbmc.obs, tissue="blood", species="human", model="m")


def test_leaving_tissue_out_says_none_is_tissue_blind(pbmc):
    with pytest.raises(TypeError, match=r"tl\.annotate.*tissue.*tissue=None.*tissue-blind"):
        cassia_sc.tl.annotate(pbmc, species="human", model="m")


def test_markers_after_a_run_where_every_cluster_failed(pbmc, scripted_llm):
    llm = scripted_llm(annotator=lambda request, genes: Reply(status=400, error_message="no"))
    cassia_sc.tl.annotate(
        pbmc, tissue="blood", species="human", client=llm.client(), progress=False
    )
    assert set(pbmc.uns["cassia"]["results"]["status"]) == {"failed"}
    with pytest.raises(cassia_sc.CassiaError, match="every cluster failed") as error:
        cassia_sc.pl.markers(pbmc, show=False)
    assert "genes" not in str(error.value)
    assert "status" in str(error.value) and "error" in str(error.value)
