"""The scripted model the tutorials run against: in their tests, in the documentation build
and for the report's screenshot (``docs/make_report_screenshot.py``).

Each notebook reads its provider and model from ``CASSIA_SC_PROVIDER`` and
``CASSIA_SC_MODEL`` (and the cache from ``CASSIA_SC_CACHE_DIR``); :func:`environment`
gives those for a server started by :func:`start` (in a test) or :func:`serve` (in a
script), whose ``ScriptedModel`` gives a plausible answer for each Louvain cluster of
pbmc68k_reduced (ANSWERS). Its judge scores cluster BOOSTED low, and the annotation boost
then settles it as BOOST_ANSWER.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import scanpy as sc
from llm_server import RecordedRequest, Reply
from scripted_llm import Override, ScriptedLLM, ScriptedLLMFactory, TempFolders
from scripted_model import annotation_reply, gene_request_reply, score_reply, signature

import cassia_sc

N_CLUSTERS = 11  # Louvain clusters of pbmc68k_reduced
# The cluster the judge scores low, and what the boost then answers for it.
BOOSTED = "9"
BOOST_ANSWER = ("Proliferating T cell", ("cycling CD8+ T cell",), ())

# Louvain cluster -> (main cell type, subtypes, possibly mixed types) the scripted model
# answers; it recognises a cluster by its top markers, which are the same whether they come
# from an AnnData, an .h5ad file or the bundled FindAllMarkers table.
ANSWERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "0": ("CD4+ T cell", ("naive CD4+ T cell", "central memory CD4+ T cell"), ()),
    "1": ("Monocyte", ("CD16+ non-classical monocyte",), ()),
    "2": ("Dendritic cell", ("conventional type 2 dendritic cell",), ()),
    "3": ("NK cell", ("CD56dim cytotoxic NK cell",), ("CD8+ cytotoxic T cell",)),
    "4": ("B cell", ("naive B cell", "memory B cell"), ()),
    "5": ("Monocyte", ("CD16+ non-classical monocyte",), ()),
    "6": ("Monocyte", ("CD14+ classical monocyte",), ("Dendritic cell",)),
    "7": ("Dendritic cell", ("conventional dendritic cell",), ()),
    "8": ("Plasma cell", ("plasmablast",), ()),
    "9": ("T cell", ("proliferating T cell",), ()),
    "10": ("Hematopoietic progenitor cell", ("CD34+ progenitor",), ()),
}


def ranked_example() -> ad.AnnData:
    """pbmc68k_reduced with a Wilcoxon result on louvain, with pts, in ``uns["wilcoxon"]``
    (the tests' ``pbmc_wilcoxon`` fixture), from which the model learns the clusters."""
    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True, key_added="wilcoxon")
    return adata


def annotator_for(pbmc_wilcoxon: ad.AnnData) -> Override:
    """An annotator answering ANSWERS, recognising each cluster by its first markers."""
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    known = {signature(markers[cluster]): answer for cluster, answer in ANSWERS.items()}
    assert len(known) == N_CLUSTERS, "two clusters share a signature"

    def annotator(request: RecordedRequest, genes: list[str]) -> Reply | None:
        answer = known.get(signature(genes))
        if answer is None:
            return None  # not an example cluster: the default answer, "Unknown"
        main, subtypes, mixed = answer
        return Reply(
            content=annotation_reply(
                main, subtypes=subtypes, mixed=mixed, key_markers=tuple(genes[:3])
            )
        )

    return annotator


def judge_and_boost_for(pbmc_wilcoxon: ad.AnnData) -> tuple[Override, Override]:
    """A judge scoring BOOSTED's first answer 60 (others 90), and a boost that asks for
    three genes, then answers BOOST_ANSWER."""
    markers = cassia_sc.top_markers(pbmc_wilcoxon, key="wilcoxon")
    doubtful = signature(markers[BOOSTED])

    def scorer(request: RecordedRequest, genes: list[str]) -> Reply:
        first = ANSWERS[BOOSTED][0]
        low = (
            signature(genes) == doubtful
            and f'"main_cell_type": "{first}"'
            in (request.messages[1]["content"].rsplit("[booster", 1)[-1])
        )
        return Reply(content=score_reply(60 if low else 90))

    def booster(request: RecordedRequest, genes: list[str]) -> Reply:
        if len(request.messages) == 2:
            return Reply(content=gene_request_reply(["MKI67", "TOP2A", "CD3E"]))
        main, subtypes, _ = BOOST_ANSWER
        return Reply(content=annotation_reply(main, subtypes=subtypes, key_markers=("MKI67",)))

    return scorer, booster


def start(factory: ScriptedLLMFactory, pbmc_wilcoxon: ad.AnnData | None = None) -> ScriptedLLM:
    """Start the tutorials' scripted model with ``factory``.

    Parameters
    ----------
    factory
        The ``scripted_llm`` fixture, or a :class:`ScriptedLLMFactory` of a script.
    pbmc_wilcoxon
        pbmc68k_reduced ranked as :func:`ranked_example` does (computed when not given).

    Returns
    -------
    ScriptedLLM
        The running server; ``factory`` closes it.
    """
    if pbmc_wilcoxon is None:
        pbmc_wilcoxon = ranked_example()
    scorer, booster = judge_and_boost_for(pbmc_wilcoxon)
    return factory(annotator=annotator_for(pbmc_wilcoxon), scorer=scorer, booster=booster)


def environment(llm: ScriptedLLM) -> dict[str, str]:
    """The variables the notebooks read (``CASSIA_SC_PROVIDER``, ``CASSIA_SC_MODEL``) and
    the cache folder (``CASSIA_SC_CACHE_DIR``), pointing at ``llm``."""
    return {
        "CASSIA_SC_PROVIDER": llm.base_url,
        "CASSIA_SC_MODEL": llm.model,
        "CASSIA_SC_CACHE_DIR": str(llm.cache_dir),
    }


def install_kernel(folder: Path, name: str) -> None:
    """Install, under ``folder``, a Jupyter kernel ``name`` running ipykernel on this
    interpreter (sys.executable): with ``folder`` first in ``JUPYTER_PATH``, it runs the
    notebooks whatever kernels are installed ("python3" may name another Python's)."""
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.executable})",
        "language": "python",
    }
    (folder / "kernels" / name).mkdir(parents=True)
    (folder / "kernels" / name / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")


@contextmanager
def serve() -> Iterator[ScriptedLLM]:
    """Serve the tutorials' scripted model outside pytest, in a temporary folder that goes
    when the block ends (with the server and the cache).

    Yields
    ------
    ScriptedLLM
        The running server; :func:`environment` gives the variables that point at it.
    """
    with (
        tempfile.TemporaryDirectory(prefix="cassia-sc-tutorial-model-") as folder,
        ScriptedLLMFactory(TempFolders(Path(folder))) as factory,
    ):
        yield start(factory)
