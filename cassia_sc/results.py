"""Typed results: one :class:`ClusterResult` per cluster, gathered in a :class:`BatchResult`.

A cluster is always present, whatever happened to it: ``status`` is ``"ok"``, ``"failed"``
(with ``error`` saying why, and the model's raw text when there was one),
``"implausible"`` (the model's answer names no cell type even after a revision: the
tissue, the species, a field name; ``error`` says why, see :mod:`cassia_sc.plausibility`)
or ``"not_run"`` (a dry run, a run stopped before the cluster's turn, or a budget
reached). What each holds is declared in :mod:`cassia_sc.fields`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import pandas as pd

from ._keys import Key
from .costs import CostEstimate
from .errors import CassiaError
from .fields import CORE_FIELDS, Field, inferred_field

Status = Literal["ok", "failed", "not_run", "implausible"]
#: The agents of the core pipelines; a step may speak as any other name too.
Agent = str
CORE_AGENTS = ("annotator", "validator", "formatter")


def h5_safe_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Return ``table`` as anndata writes it alike in every version: text as Python strings.

    Parameters
    ----------
    table
        Columns of numbers, booleans or text.

    Returns
    -------
    pandas.DataFrame
        A copy whose text columns are ``object`` columns of ``str`` (pandas 3's own string
        dtype is written differently by anndata 0.12 and 0.13) and whose index is
        ``"0"``, ``"1"``, ...

    Examples
    --------
    >>> h5_safe_frame(pd.DataFrame({"cluster": ["1", "2"], "n": [3, 4]})).dtypes.tolist()
    [dtype('O'), dtype('int64')]
    """
    table = table.copy()
    for column in table.columns:
        if table[column].dtype.kind not in "biuf":
            table[column] = table[column].astype(str).astype(object)
    table.index = pd.Index([str(i) for i in range(len(table))], dtype=object)
    return table


@dataclass(frozen=True)
class Turn:
    """One message of a cluster's conversation.

    Attributes
    ----------
    agent
        Whose conversation it belongs to.
    role
        ``"system"``, ``"user"`` or ``"assistant"``.
    content
        The text.
    cached
        For replies: served from the cache rather than the network.
    prompt_tokens, completion_tokens
        For replies: the call's token usage.
    """

    agent: Agent
    role: str
    content: str
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ClusterResult:
    """Everything known about one cluster's annotation.

    Attributes
    ----------
    cluster
        The cluster's name.
    markers
        The ranked markers the model was given.
    status
        ``"ok"``, ``"failed"``, ``"implausible"`` or ``"not_run"``.
    main_cell_type
        The main cell type, or None when there is no answer.
    sub_cell_types
        Up to three more specific candidates, most likely first.
    possible_mixed_cell_types
        Other populations the cluster may contain.
    possible_tissues
        Likely tissues of origin (tissue-blind runs).
    key_markers
        The markers the answer rests on, as the model cited them.
    unsupported_markers
        Cited key markers that are not in ``markers``.
    validation_passed
        The validator's last verdict; None when it was not given or not readable.
    validation_feedback
        The validator's last feedback.
    iterations
        Annotation rounds (1 when the first answer passed).
    error
        Why the cluster failed.
    raw_reply
        The annotator's last text when no answer could be read from it.
    conversation
        Every message, in order.
    prompt_tokens, completion_tokens
        Tokens of the cluster's calls, failed ones and replies from the cache included:
        what its answer took (:attr:`BatchResult.usage` counts what a run paid).
    requests
        HTTP requests sent for the cluster, retries included (0 when all were cached).
    calls
        Model replies the cluster used.
    cached_calls
        Of those, served from the cache.
    estimated_prompt_tokens
        A dry run's estimate of the prompt tokens the cluster will need.
    ontology_term_id, ontology_label, ontology_score
        The Cell Ontology term of ``main_cell_type`` (``"unknown"`` when none fits), its
        label and the match score; None when no mapping was made.
    subtype_ontology_term_ids
        The Cell Ontology term of each of ``sub_cell_types``, in order.
    agreement
        Over repeated runs: the share that agree with this answer; None for one run.
    extra
        Values of the fields that a pipeline's further steps declare (a score, say), by
        name; read them as attributes (``result.score``) or with :meth:`get`.

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
    ...     species="human", model="any-model", dry_run=True, progress=False)
    >>> first = plan.clusters[0]
    >>> first.cluster, first.markers[:3]
    ('0', ['CD3D', 'IL32', 'CD40LG'])
    """

    cluster: str
    markers: list[str]
    status: Status = "not_run"
    main_cell_type: str | None = None
    sub_cell_types: list[str] = field(default_factory=list)
    possible_mixed_cell_types: list[str] = field(default_factory=list)
    possible_tissues: list[str] = field(default_factory=list)
    key_markers: list[str] = field(default_factory=list)
    unsupported_markers: list[str] = field(default_factory=list)
    validation_passed: bool | None = None
    validation_feedback: str = ""
    iterations: int = 0
    error: str | None = None
    raw_reply: str | None = None
    conversation: list[Turn] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    calls: int = 0
    cached_calls: int = 0
    estimated_prompt_tokens: int | None = None
    ontology_term_id: str | None = None
    ontology_label: str | None = None
    ontology_score: float | None = None
    subtype_ontology_term_ids: list[str] = field(default_factory=list)
    agreement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.extra = dict(self.extra)  # a copy (dataclasses.replace) must not share it

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a value a step added under its field's name.
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def get(self, declared: Field) -> Any:
        """Return the value of a declared field, or its default when nothing set it.

        Parameters
        ----------
        declared
            The field.

        Returns
        -------
        Any
            The value.
        """
        if declared.key in _ATTRIBUTES:
            return getattr(self, declared.key)
        return self.extra.get(declared.key, declared.default)

    def set(self, name: str, value: Any) -> None:
        """Set a core attribute, or the value of a field a step declares.

        Parameters
        ----------
        name
            The attribute or field name.
        value
            Its value.
        """
        if name in _ATTRIBUTES:
            setattr(self, name, value)
        else:
            self.extra[name] = value

    def turns(self, agent: Agent) -> list[dict[str, Any]]:
        """Return the messages of one agent's conversation as plain dicts.

        Parameters
        ----------
        agent
            ``"annotator"``, ``"validator"`` or ``"formatter"``.

        Returns
        -------
        list of dict
            ``step`` (the message's place in the whole conversation), ``role`` and
            ``content`` of each message; replies also have ``cached``,
            ``prompt_tokens`` and ``completion_tokens``.
        """
        return [
            {"step": step, "role": t.role, "content": t.content}
            | (
                {
                    "cached": t.cached,
                    "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                }
                if t.role == "assistant"
                else {}
            )
            for step, t in enumerate(self.conversation)
            if t.agent == agent
        ]


_ATTRIBUTES = frozenset(f.name for f in fields(ClusterResult))


@dataclass
class BatchResult:
    """The result of a batch: one :class:`ClusterResult` per cluster, in cluster order.

    Attributes
    ----------
    clusters
        The results, in the order of the input clusters.
    settings
        The run's parameters (model, provider, tissue, species, ...); never an API key.
    dry_run
        Whether no model was called.
    interrupted
        Whether the run was stopped before every cluster was done.
    fields
        What each cluster holds: :data:`CORE_FIELDS` and the fields of the pipeline's
        further steps, in table order.
    estimate
        A dry run's calls, tokens and cost, step by step (None for a run that was made).

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
    ...     species="human", model="any-model", dry_run=True, progress=False)
    >>> len(plan), plan["3"].status
    (11, 'not_run')
    """

    clusters: list[ClusterResult]
    settings: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    interrupted: bool = False
    fields: tuple[Field, ...] = CORE_FIELDS
    estimate: CostEstimate | None = None

    def __len__(self) -> int:
        return len(self.clusters)

    def __getitem__(self, cluster: str) -> ClusterResult:
        for result in self.clusters:
            if result.cluster == cluster:
                return result
        raise KeyError(cluster)

    def clusters_named(self, names: Iterable[str] | None = None) -> list[str]:
        """Return the names of the clusters asked for, in batch order (all when None).

        Parameters
        ----------
        names
            Cluster names, or None.

        Returns
        -------
        list of str
            The names, in the batch's order.

        Raises
        ------
        CassiaError
            When a name is not a cluster of the batch; the message lists them.
        """
        known = [c.cluster for c in self.clusters]
        if names is None:
            return known
        asked = {str(n) for n in names}
        unknown = sorted(asked - set(known))
        if unknown:
            raise CassiaError(f"No cluster named {unknown} in this annotation; it has {known}.")
        return [c for c in known if c in asked]

    @property
    def failed(self) -> list[ClusterResult]:
        """The clusters with no answer to use: failed, or answered with no cell type."""
        return [c for c in self.clusters if c.status in ("failed", "implausible")]

    @property
    def usage(self) -> dict[str, int]:
        """Totals over all clusters: HTTP requests, calls, cached calls and paid tokens.

        The tokens are those the server reported in this run: a reply from the cache (of
        an earlier run, or asked for another cluster with the same markers) was paid for
        once, when it was asked, and adds none.
        """
        totals = dict.fromkeys(
            ("prompt_tokens", "completion_tokens", "requests", "calls", "cached_calls"), 0
        )
        for result in self.clusters:
            for name in totals:
                totals[name] += getattr(result, name)
            for turn in result.conversation:
                if turn.cached:
                    totals["prompt_tokens"] -= turn.prompt_tokens
                    totals["completion_tokens"] -= turn.completion_tokens
        return totals

    def summary(self) -> pd.DataFrame:
        """Return the summary table: CASSIA's columns, in its order, then ours.

        Returns
        -------
        pandas.DataFrame
            One row per cluster: CASSIA's eleven columns, then every declared field with
            a CSV column; lists are joined with ``", "``.

        Examples
        --------
        >>> import cassia_sc
        >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
        ...     species="human", model="any-model", dry_run=True, progress=False)
        >>> plan.summary()["Cluster ID"].tolist()[:3]
        ['0', '1', '2']
        """
        ours = [f for f in self.fields if f.csv]
        joined = Key.list_separator.join
        rows = []
        for c in self.clusters:
            row = {
                Key.csv.cluster: c.cluster,
                Key.csv.main_cell_type: c.main_cell_type or "",
                Key.csv.sub_cell_types: joined(c.sub_cell_types),
                Key.csv.possible_mixed_cell_types: joined(c.possible_mixed_cell_types),
                Key.csv.marker_number: len(c.markers),
                Key.csv.markers: joined(c.markers),
                Key.csv.iterations: c.iterations,
                Key.csv.model: self.settings.get("model", ""),
                Key.csv.provider: self.settings.get("provider", ""),
                Key.csv.tissue: self.settings.get("tissue") or "",
                Key.csv.species: self.settings.get("species", ""),
            }
            row |= {f.csv: f.to_csv(c.get(f)) for f in ours}
            rows.append(row)
        return pd.DataFrame(rows, columns=summary_columns(self.fields))

    def table(self) -> pd.DataFrame:
        """Return one row per cluster in plain columns, as ``tl.annotate`` stores it in ``uns``.

        Returns
        -------
        pandas.DataFrame
            A column per declared field; text as Python strings, lists joined with
            ``", "`` (a JSON array when an item holds a comma: see
            :func:`cassia_sc.fields.join_list`), no missing text (empty strings instead),
            NaN for a missing number, so that it survives ``write_h5ad`` with any anndata.

        Examples
        --------
        >>> import cassia_sc
        >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("pbmc68k_processed"), tissue="blood",
        ...     species="human", model="any-model", dry_run=True, progress=False)
        >>> plan.table().columns[:3].tolist()
        ['cluster', 'main_cell_type', 'sub_cell_types']
        """
        rows = [{f.name: f.to_table(c.get(f)) for f in self.fields} for c in self.clusters]
        return h5_safe_frame(pd.DataFrame(rows, columns=[f.name for f in self.fields]))

    @classmethod
    def from_uns(
        cls, record: Mapping[str, Any], *, declared: Sequence[Field] = CORE_FIELDS
    ) -> BatchResult:
        """Rebuild a batch from what ``tl.annotate`` stored in ``uns[key_added]``.

        Parameters
        ----------
        record
            ``adata.uns[key_added]``, with ``params``, ``results`` and ``conversations``.
        declared
            The fields the annotation's pipeline declares (see
            :func:`cassia_sc.get.fields`); a stored column none of them declares is read
            as a number or as text.

        Returns
        -------
        BatchResult
            The clusters in their order, with their conversations.

        Examples
        --------
        >>> result = cassia_sc.BatchResult.from_uns(adata.uns["cassia"])  # doctest: +SKIP
        """
        table: pd.DataFrame = record[Key.uns.results]
        by_name = {f.name: f for f in declared}
        stored = [by_name.get(name) or inferred_field(name, table[name]) for name in table]
        stored_names = {f.name for f in stored}
        kept = tuple(stored) + tuple(f for f in declared if f.name not in stored_names)
        conversations = json.loads(record.get(Key.uns.conversations) or "[]")
        turns_by_cluster = {c["cluster"]: c for c in conversations}
        clusters = []
        for row in table.to_dict("records"):
            result = ClusterResult(cluster=str(row["cluster"]), markers=[])
            for declaration in stored:
                result.set(declaration.key, declaration.from_table(row[declaration.name]))
            result.conversation = turns_from_record(turns_by_cluster.get(row["cluster"], {}))
            clusters.append(result)
        return cls(clusters=clusters, settings=dict(record.get(Key.uns.params, {})), fields=kept)

    def conversations(self) -> list[dict[str, Any]]:
        """Return each cluster's conversations, agent by agent, JSON-ready.

        Returns
        -------
        list of dict
            Per cluster: ``cluster``, ``status``, ``error`` and the turns of the
            ``annotator``, ``validator`` and ``formatter``, then of any other agent that
            spoke.
        """
        return [
            {"cluster": c.cluster, "status": c.status, "error": c.error}
            | {agent: c.turns(agent) for agent in _agents(c)}
            for c in self.clusters
        ]

    def to_json(self) -> str:
        """Serialise the whole result (settings, clusters, conversations) to JSON text.

        Returns
        -------
        str
            JSON text.
        """
        return json.dumps(
            {
                "settings": self.settings,
                "dry_run": self.dry_run,
                "interrupted": self.interrupted,
                "clusters": [asdict(c) for c in self.clusters],
            },
            ensure_ascii=False,
            indent=1,
        )


def summary_columns(declared: Iterable[Field] = CORE_FIELDS) -> list[str]:
    """Return the columns of the summary CSV: CASSIA's eleven, then the declared ones.

    Parameters
    ----------
    declared
        The fields of the batch.

    Returns
    -------
    list of str
        Column names, in order.

    Examples
    --------
    >>> summary_columns()[:2]
    ['Cluster ID', 'Predicted General Cell Type']
    """
    cassia = [
        Key.csv.cluster,
        Key.csv.main_cell_type,
        Key.csv.sub_cell_types,
        Key.csv.possible_mixed_cell_types,
        Key.csv.marker_number,
        Key.csv.markers,
        Key.csv.iterations,
        Key.csv.model,
        Key.csv.provider,
        Key.csv.tissue,
        Key.csv.species,
    ]
    return cassia + [f.csv for f in declared if f.csv]


#: Columns of the summary table of the core pipelines.
SUMMARY_COLUMNS = summary_columns()


def _agents(cluster: ClusterResult) -> list[str]:
    spoke = dict.fromkeys(t.agent for t in cluster.conversation)
    return [*CORE_AGENTS, *(agent for agent in spoke if agent not in CORE_AGENTS)]


def turns_from_record(stored: Mapping[str, Any]) -> list[Turn]:
    """Rebuild a cluster's conversation, in step order, from its stored agents' turns.

    Parameters
    ----------
    stored
        One cluster's entry of :meth:`BatchResult.conversations`: agent name -> turns.

    Returns
    -------
    list of Turn
        The messages in the order they were sent.
    """
    ordered = sorted(
        (
            (turn.get("step", 0), agent, turn)
            for agent, turns in stored.items()
            if isinstance(turns, list)
            for turn in turns
        ),
        key=lambda item: item[0],
    )
    return [
        Turn(
            agent,
            t["role"],
            t["content"],
            t.get("cached", False),
            t.get("prompt_tokens", 0),
            t.get("completion_tokens", 0),
        )
        for _, agent, t in ordered
    ]
