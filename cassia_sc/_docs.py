"""Parameter descriptions shared by every function and the command line, written once.

A docstring names a shared parameter on a line of its own, in braces (``{tissue}``), where
its numpydoc entry goes; :func:`fill_docs` puts the entry there. The command line takes its
help texts from the same descriptions with :func:`cli_help`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from ._keys import Default, Key

F = TypeVar("F", bound=Callable)

#: Parameter name -> its description (numpydoc body, reStructuredText).
PARAMETERS: dict[str, str] = {
    "marker": (
        "Markers in any format :func:`cassia_sc.top_markers` reads: an AnnData with a "
        ":func:`scanpy.tl.rank_genes_groups` result, a Seurat ``FindAllMarkers`` or Scanpy "
        "``rank_genes_groups_df`` table (a DataFrame or a CSV/TSV path), or two columns "
        "(cluster, genes)."
    ),
    "tissue": (
        'Tissue of the sample, e.g. ``"blood"``; None (on the command line, no ``--tissue``) '
        "for a tissue-blind annotation, in which the answer also proposes tissues of origin."
    ),
    "species": 'Species of the sample, e.g. ``"human"`` or ``"mouse"``.',
    "model": 'Model name as the provider spells it, e.g. ``"openai/gpt-4o-mini"`` on OpenRouter.',
    "provider": (
        '``"openrouter"``, ``"openai"``, ``"anthropic"`` or the base URL of any '
        "OpenAI-compatible server (Ollama, vLLM, LM Studio, a proxy); default "
        f'``"{Default.provider}"``.'
    ),
    "api_key": (
        "The key; by default ``OPENROUTER_API_KEY``, ``OPENAI_API_KEY``, "
        "``ANTHROPIC_API_KEY``, or for a base URL ``CASSIA_API_KEY``, then CASSIA's "
        "``CUSTOMIZED_API_KEY`` (``DEEPSEEK_API_KEY`` first for api.deepseek.com). A server "
        "on this machine needs none."
    ),
    "max_workers": f"Clusters annotated at the same time (default {Default.max_workers}).",
    "n_genes": f"Markers per cluster given to the model (default {Default.n_genes}).",
    "additional_info": "Free text about the sample (treatment, sorting, disease), if any.",
    "parent": (
        'The population the clusters are subclusters of, e.g. ``"T cell"``: the model is '
        "told so, and that each subcluster's markers were ranked against its siblings (as "
        "``rank_genes_groups`` computed on that population ranks them), and names what "
        "sets each one apart. None: the clusters of a whole dataset."
    ),
    "restrict_to": (
        "Annotate only the subclusters of one population: ``(column, values)``, the cells "
        "whose ``obs[column]`` is one of ``values`` (Scanpy's ``restrict_to``). The markers "
        "in ``uns[key]`` must be those of the ``groupby`` subclusters ranked against each "
        "other on these cells; cells outside get NaN, and ``parent`` defaults to the values."
    ),
    "temperature": "Sampling temperature; sent where the endpoint accepts it.",
    "validator_involvement": (
        '``"v1"`` (moderate; up to 2 rounds) or ``"v0"`` (strict: a stricter review, an '
        "answer citing genes outside the marker list is sent back at once, up to 3 rounds); "
        "the name of a pipeline of :mod:`cassia_sc.agents`."
    ),
    "reasoning": (
        'Reasoning effort (``"low"``, ``"medium"``, ``"high"``) for models that reason; sent '
        "as each provider expects it."
    ),
    "ranking_method": (
        '``"avg_log2FC"`` (descending), ``"p_val_adj"`` (ascending), ``"pct_diff"`` '
        '(fraction in the cluster minus fraction outside, descending) or ``"Score"`` '
        "(Scanpy's ``scores``, descending)."
    ),
    "ascending": "Override the ranking direction of ``ranking_method``.",
    "celltype_column": "Column of a marker table that names the cluster; overrides detection.",
    "gene_column_name": (
        "Column of a marker table that names the gene (or lists the genes); overrides detection."
    ),
    "key": (
        f"Key of the :func:`scanpy.tl.rank_genes_groups` result in ``adata.uns`` "
        f'(default ``"{Key.uns.markers}"``).'
    ),
    "groupby": (
        "The ``obs`` column of the clusters; by default the one the markers were computed for."
    ),
    "gene_symbols": (
        "Column of ``adata.var`` (or ``adata.raw.var``) holding gene symbols, for when "
        "``var_names`` are IDs such as Ensembl's."
    ),
    "max_retries": (
        "Further attempts of a failed request (HTTP 408/409/429/5xx, timeouts, connection "
        "errors, malformed or empty replies), with exponential backoff."
    ),
    "timeout": "Seconds before one request is abandoned and retried.",
    "max_tokens": (
        "Most tokens one reply may have, sent with every request (``None``: none sent, the "
        "server decides). A reply cut off at it is asked again once with twice the room; "
        "after a timeout the rest of the run asks for half. Lower it for a small local "
        "model that does not stop."
    ),
    "requests_per_minute": "Cap on requests per minute across all workers.",
    "cache": "Keep every reply on disk: a re-run costs nothing and an interrupted run resumes.",
    "cache_dir": "Cache folder; default ``$CASSIA_SC_CACHE_DIR`` or the user cache folder.",
    "progress": "Show a progress bar.",
    "batch_api": (
        "Send the calls through the provider's batch API, at half the price, answered "
        "within a day: ``True`` for OpenAI's or Anthropic's own, ``\"openai\"`` or "
        '``"anthropic"`` for a base URL that speaks one. The clusters advance round by '
        "round (every annotator, then every validator, ...); the batches are remembered in "
        "the cache folder, so that a run stopped while waiting continues where it was when "
        "started again, paying nothing twice (``cassia-sc jobs`` lists them)."
    ),
    "max_cost": (
        "Dollars the run may spend at most (the annotation, scores and boosts together, "
        "at each model's price; the batch price with ``batch_api``): a call that would pass "
        "it is not sent, and its cluster is left not run with the reason. Run again with a "
        "larger budget to go on from the cache. Needs the models' prices (``prices``, or "
        "OpenRouter's list)."
    ),
    "max_tokens_total": (
        "Tokens (prompt and completion) the run may use at most, counted as ``max_cost``."
    ),
    "batch_poll_interval": (
        "With ``batch_api``: seconds between the first polls of a batch; the wait grows "
        "to a minute."
    ),
    "prices": (
        "The models' prices, for the cost in dollars (a dry run's estimate, what a run "
        "spent, ``max_cost``): a table, ``{model: (prompt, completion)}`` "
        "in dollars per million tokens, or a CSV or JSON file of them (columns ``model``, "
        "``prompt``, ``completion``). Models it lacks are priced from the provider's own "
        "model list where it publishes one (OpenRouter's), kept a day in the cache folder."
    ),
    "client": (
        "A client to use instead of building one from ``model``, ``provider`` and the "
        "connection options (e.g. to share one pool between runs)."
    ),
    "ontology": (
        "Map each main cell type to a Cell Ontology term (offline; see "
        ":mod:`cassia_sc.ontology`). None: when the ``cassia-sc[ontology]`` extra is "
        "installed; True: always (an error without the extra); False: never; "
        '``"model"`` (``tl.annotate``): also let the model choose among candidate terms for '
        "the labels the offline rules cannot map."
    ),
    "n_runs": (
        "Annotate this many times (at a ``temperature`` above 0) and keep each cluster's "
        "consensus, with the share of runs that agree (see the uncertainty guide)."
    ),
    "models": (
        "Annotate with each of these models (``n_runs`` times each) instead of ``model``, and "
        "keep the consensus."
    ),
    "agreement_threshold": (
        "With repeated runs, clusters whose agreement is below it are flagged for review "
        f"(default {Default.agreement_threshold})."
    ),
    "score": (
        "Have a judge model grade each answer from 0 to 100, with its reasons (a call per cluster)."
    ),
    "score_model": (
        "The judge's model; by default the run's model. A model of another vendor is the "
        "better practice: it does not share the annotator's blind spots."
    ),
    "score_provider": "The judge's provider, when it is not the run's.",
    "boost_below": (
        "Boost the clusters scored below this (e.g. 75), rejected by the validator or, after "
        "repeated runs, below the agreement threshold: the model looks genes up in the data "
        "and may revise its answer. None: no boost."
    ),
    "boost_rounds": (
        f"Rounds of the boost at most, the final answer included (default {Default.boost_rounds})."
    ),
    "key_added": (
        "Prefix of the ``obs`` columns and key of the ``uns`` entry "
        f'(default "{Default.key_added}").'
    ),
    "key_read": f'The ``key_added`` of the annotation (default "{Default.key_added}").',
    "annotated": "Data annotated by :func:`cassia_sc.tl.annotate`.",
    "output_name": (
        "Path prefix of CASSIA's four files, ``_summary.csv``, ``_full.csv``, "
        "``_conversations.json`` and ``_report.html``, and of our ``_record.json`` (a "
        "``.csv``, ``.json`` or ``.html`` suffix is dropped)."
    ),
    "basis": f'Embedding in ``adata.obsm[f"X_{{basis}}"]`` (default "{Default.basis}").',
    "ax": "Axes to draw on; a new figure when None.",
    "show": "Show the figure; by default as Scanpy's ``settings.autoshow`` says.",
    "return_fig": "Return the figure instead of the axes.",
    "copy": "Return an annotated copy instead of writing to ``adata``.",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


#: Placeholders whose entry documents a parameter of another name.
_SHOWN_AS = {"key_read": "key", "annotated": "adata"}


def _entry(name: str, indent: str) -> str:
    shown = _SHOWN_AS.get(name, name)
    body = PARAMETERS[name]
    return f"{indent}{shown}\n{indent}    {body}"


def fill_docs(function: F) -> F:
    """Put the shared description of each ``{name}`` line into the docstring of ``function``.

    Parameters
    ----------
    function
        A function whose docstring has placeholder lines such as ``    {tissue}``.

    Returns
    -------
    callable
        ``function``, its docstring filled.

    Raises
    ------
    KeyError
        When a placeholder names no shared parameter (a typo is a bug, not a blank).

    Examples
    --------
    >>> @fill_docs
    ... def f(*, tissue):
    ...     '''Do it.
    ...
    ...     Parameters
    ...     ----------
    ...     {tissue}
    ...     '''
    >>> "tissue-blind" in f.__doc__
    True
    """
    if function.__doc__:
        function.__doc__ = _PLACEHOLDER.sub(
            lambda found: _entry(found["name"], found["indent"]), function.__doc__
        )
    return function


_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def cli_help(name: str) -> str:
    """Return a parameter's description as plain text for ``--help``.

    Parameters
    ----------
    name
        A key of :data:`PARAMETERS`.

    Returns
    -------
    str
        The description without reStructuredText markup, and with ``%`` escaped for
        :mod:`argparse`.

    Examples
    --------
    >>> cli_help("timeout")
    'Seconds before one request is abandoned and retried.'
    """
    text = _ROLE.sub(lambda found: found[1].rsplit(".", 1)[-1], PARAMETERS[name])
    return text.replace("``", "").replace("%", "%%")
