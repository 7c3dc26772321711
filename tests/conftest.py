from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # plots render to files, never to a screen

import anndata as ad
import pytest
import scanpy as sc
from llm_server import DEFAULT_MODEL, Handler, LLMServer, RecordedRequest, Reply
from scripted_model import ScriptedModel, signature

import cassia_sc
from cassia_sc import LLMClient

DATA = Path(__file__).parent / "data"
MARKER100 = DATA / "marker100.csv"

#: A ScriptedModel override: ``(request, markers) -> Reply``, or None for the default answer.
Override = Callable[[RecordedRequest, list[str]], Reply | None]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads a real key or writes to the user's cache folder."""
    monkeypatch.setenv("CASSIA_SC_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))
    for variable in (
        "OPENROUTER_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "CASSIA_API_KEY",
        "CUSTOMIZED_API_KEY",
        "DEEPSEEK_API_KEY",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def _pbmc_wilcoxon_once() -> ad.AnnData:
    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True, key_added="wilcoxon")
    return adata


@pytest.fixture
def pbmc() -> ad.AnnData:
    """pbmc68k_reduced as shipped: bulk_labels, a stored logreg rank_genes_groups, X_umap."""
    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc_wilcoxon(_pbmc_wilcoxon_once: ad.AnnData) -> ad.AnnData:
    """pbmc68k_reduced with a Wilcoxon result on louvain, with pts, in uns['wilcoxon']."""
    return _pbmc_wilcoxon_once.copy()


# -- the scripted model, served ------------------------------------------------------------


@dataclass
class ScriptedLLM:
    """A scripted model served on 127.0.0.1, and the settings that point cassia_sc at it.

    Attributes
    ----------
    server
        The running :class:`llm_server.LLMServer`: its ``requests``, ``request_count``,
        ``max_concurrency``; its ``handler`` may be swapped during a test.
    cache_dir
        This server's cache folder, not yet created: every :meth:`options` and
        :meth:`client` share it (a second run is served from the cache) unless given
        another ``cache_dir``.
    model
        The model name sent, ``"test-model"``.
    """

    server: LLMServer
    cache_dir: Path
    model: str = DEFAULT_MODEL
    _clients: list[LLMClient] = field(default_factory=list, repr=False)

    @property
    def base_url(self) -> str:
        """The server's OpenAI-compatible base URL, the ``provider`` cassia_sc is given."""
        return self.server.base_url

    def options(self, **extra: Any) -> dict[str, Any]:
        """Keyword options of ``run_batch``, ``tl.annotate``, ``runCASSIA_batch`` and
        ``run_repeated`` that send every call here: ``model``, ``provider``, ``cache_dir``
        and ``progress=False``, updated with ``extra``."""
        settings = {
            "model": self.model,
            "provider": self.base_url,
            "cache_dir": self.cache_dir,
            "progress": False,
        }
        return settings | extra

    def client(self, **extra: Any) -> LLMClient:
        """An :class:`cassia_sc.LLMClient` for this server (``model``, ``provider``,
        ``cache_dir``, updated with ``extra``), closed when the test ends."""
        settings = {"model": self.model, "provider": self.base_url, "cache_dir": self.cache_dir}
        client = LLMClient(**(settings | extra))
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients made by :meth:`client`, then the server (idempotent)."""
        while self._clients:
            self._clients.pop().close()
        self.server.close()


class ScriptedLLMFactory:
    """Starts :class:`ScriptedLLM` servers on demand and closes them all on :meth:`close`.

    The ``scripted_llm`` fixture is one of these, closed at the end of the test; a fixture
    of a wider scope can make its own, as a context manager.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._started: list[ScriptedLLM] = []

    def __call__(
        self,
        cell_types: Mapping[str, str] | None = None,
        *,
        annotator: Override | None = None,
        validator: Override | None = None,
        formatter: Override | None = None,
        scorer: Override | None = None,
        booster: Override | None = None,
        delay: float = 0.0,
        handler: Handler | None = None,
    ) -> ScriptedLLM:
        """Start a server answering as ``ScriptedModel(cell_types, annotator=..., ...)``.

        Parameters
        ----------
        cell_types, annotator, validator, formatter, scorer, booster, delay
            As for :class:`scripted_model.ScriptedModel`.
        handler
            A raw ``llm_server`` handler answering instead of a ScriptedModel (it may wrap
            one); then none of the ScriptedModel parameters may be given.
        """
        if handler is None:
            handler = ScriptedModel(
                cell_types,
                annotator=annotator,
                validator=validator,
                formatter=formatter,
                scorer=scorer,
                booster=booster,
                delay=delay,
            )
        elif cell_types or annotator or validator or formatter or scorer or booster or delay:
            raise TypeError("scripted_llm: give either handler= or the ScriptedModel parameters")
        cache_dir = self._tmp_path_factory.mktemp("scripted-llm") / "cache"
        llm = ScriptedLLM(server=LLMServer(handler), cache_dir=cache_dir)
        self._started.append(llm)
        return llm

    def close(self) -> None:
        """Close every client and server started so far."""
        while self._started:
            self._started.pop().close()

    def __enter__(self) -> ScriptedLLMFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def scripted_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLLMFactory]:
    """Start scripted-model servers for this test; every server and client closes after it.

    ``scripted_llm(cell_types=None, *, annotator=None, validator=None, formatter=None,
    delay=0.0, handler=None)`` starts an ``LLMServer`` answering as a ``ScriptedModel``
    (or as ``handler``) and returns a :class:`ScriptedLLM`::

        def test_b_cells(scripted_llm):
            llm = scripted_llm({signature(markers): "B cell"}, delay=0.1)
            result = cassia_sc.run_batch(table, tissue="blood", species="human", **llm.options())
            assert llm.server.request_count == 2 * len(table)

    ``llm.client(max_retries=1)`` gives an ``LLMClient`` for ``client=`` instead.
    """
    with ScriptedLLMFactory(tmp_path_factory) as factory:
        yield factory


# -- pbmc68k_reduced as a file, and a model that knows its clusters ------------------------


def digest(path: Path) -> str:
    """The SHA-256 of a file, to tell whether it changed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def h5ad(pbmc, tmp_path) -> Path:
    """pbmc68k_reduced written to an .h5ad file."""
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    return path


@pytest.fixture
def llm(pbmc, scripted_llm) -> ScriptedLLM:
    """A scripted model that calls each cluster of pbmc68k_reduced "type <cluster>"."""
    markers = cassia_sc.top_markers(pbmc)
    return scripted_llm({signature(g): f"type {c}" for c, g in markers.items()})


# -- the command line ------------------------------------------------------------------------


def cli(llm: ScriptedLLM, *args: str) -> list[str]:
    """The command's arguments: ``args``, then the options that send every call to ``llm``."""
    return [
        *args,
        "--tissue",
        "blood",
        "--species",
        "human",
        "--model",
        llm.model,
        "--provider",
        llm.base_url,
        "--cache-dir",
        str(llm.cache_dir),
    ]


def command(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cassia_sc`` with this interpreter: no console script on PATH needed."""
    return subprocess.run(
        [sys.executable, "-m", "cassia_sc", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )
