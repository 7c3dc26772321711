"""Typed results: one :class:`ClusterResult` per cluster, gathered in a :class:`BatchResult`.

A cluster is always present, whatever happened to it: ``status`` is ``"ok"``, ``"failed"``
(with ``error`` saying why, and the model's raw text when there was one) or ``"not_run"``
(a dry run, or a run stopped before the cluster's turn).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd

Status = Literal["ok", "failed", "not_run"]
Agent = Literal["annotator", "validator", "formatter"]

#: Columns of the summary table: CASSIA's first, in its order, then ours.
CASSIA_COLUMNS = [
    "Cluster ID",
    "Predicted General Cell Type",
    "Predicted Detailed Cell Type",
    "Possible Mixed Cell Types",
    "Marker Number",
    "Marker List",
    "Iterations",
    "Model",
    "Provider",
    "Tissue",
    "Species",
]
OUR_COLUMNS = [
    "Status",
    "Validation Passed",
    "Key Markers",
    "Unsupported Markers",
    "Prompt Tokens",
    "Completion Tokens",
    "Error",
    "Possible Tissues",
    "Ontology Term ID",
    "Ontology Label",
    "Agreement",
]
SUMMARY_COLUMNS = CASSIA_COLUMNS + OUR_COLUMNS

#: Columns of :meth:`BatchResult.table`, stored by ``tl.annotate`` in ``uns``.
TABLE_COLUMNS = [
    "cluster",
    "main_cell_type",
    "sub_cell_types",
    "possible_mixed_cell_types",
    "possible_tissues",
    "key_markers",
    "unsupported_markers",
    "markers",
    "status",
    "validation",
    "validation_feedback",
    "iterations",
    "prompt_tokens",
    "completion_tokens",
    "requests",
    "calls",
    "cached_calls",
    "error",
    "ontology_term_id",
    "ontology_label",
    "ontology_score",
    "subtype_ontology_term_ids",
    "agreement",
]
_VALIDATION_NAMES = {True: "passed", False: "failed", None: "unknown"}


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


def _number_or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _number_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


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
        ``"ok"``, ``"failed"`` or ``"not_run"``.
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
        Tokens used by the cluster's calls.
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

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("processed"), tissue="blood",
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

    def conversation_text(self) -> str:
        """Return the whole conversation as readable text, one block per message."""
        return "\n\n".join(f"[{t.agent} / {t.role}]\n{t.content}" for t in self.conversation)


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

    Examples
    --------
    >>> import cassia_sc
    >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("processed"), tissue="blood",
    ...     species="human", model="any-model", dry_run=True, progress=False)
    >>> len(plan), plan["3"].status
    (11, 'not_run')
    """

    clusters: list[ClusterResult]
    settings: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    interrupted: bool = False

    def __len__(self) -> int:
        return len(self.clusters)

    def __getitem__(self, cluster: str) -> ClusterResult:
        for result in self.clusters:
            if result.cluster == cluster:
                return result
        raise KeyError(cluster)

    @property
    def failed(self) -> list[ClusterResult]:
        """The clusters whose annotation failed."""
        return [c for c in self.clusters if c.status == "failed"]

    @property
    def usage(self) -> dict[str, int]:
        """Totals over all clusters: tokens, HTTP requests, calls and cached calls."""
        totals = dict.fromkeys(
            ("prompt_tokens", "completion_tokens", "requests", "calls", "cached_calls"), 0
        )
        for result in self.clusters:
            for name in totals:
                totals[name] += getattr(result, name)
        return totals

    def summary(self) -> pd.DataFrame:
        """Return the summary table: CASSIA's columns, in its order, then ours.

        Returns
        -------
        pandas.DataFrame
            One row per cluster, with the columns of :data:`SUMMARY_COLUMNS`; lists
            are joined with ``", "``.

        Examples
        --------
        >>> import cassia_sc
        >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("processed"), tissue="blood",
        ...     species="human", model="any-model", dry_run=True, progress=False)
        >>> plan.summary()["Cluster ID"].tolist()[:3]
        ['0', '1', '2']
        """
        rows = []
        for c in self.clusters:
            rows.append(
                {
                    "Cluster ID": c.cluster,
                    "Predicted General Cell Type": c.main_cell_type or "",
                    "Predicted Detailed Cell Type": ", ".join(c.sub_cell_types),
                    "Possible Mixed Cell Types": ", ".join(c.possible_mixed_cell_types),
                    "Marker Number": len(c.markers),
                    "Marker List": ", ".join(c.markers),
                    "Iterations": c.iterations,
                    "Model": self.settings.get("model", ""),
                    "Provider": self.settings.get("provider", ""),
                    "Tissue": self.settings.get("tissue") or "",
                    "Species": self.settings.get("species", ""),
                    "Status": c.status,
                    "Validation Passed": c.validation_passed,
                    "Key Markers": ", ".join(c.key_markers),
                    "Unsupported Markers": ", ".join(c.unsupported_markers),
                    "Prompt Tokens": c.prompt_tokens,
                    "Completion Tokens": c.completion_tokens,
                    "Error": c.error or "",
                    "Possible Tissues": ", ".join(c.possible_tissues),
                    "Ontology Term ID": c.ontology_term_id or "",
                    "Ontology Label": c.ontology_label or "",
                    "Agreement": c.agreement,
                }
            )
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    def table(self) -> pd.DataFrame:
        """Return one row per cluster in plain columns, as ``tl.annotate`` stores it in ``uns``.

        Returns
        -------
        pandas.DataFrame
            The columns of :data:`TABLE_COLUMNS`; text as Python strings, lists joined
            with ``", "``, no missing values (empty strings instead), so that it survives
            ``write_h5ad`` with any anndata.

        Examples
        --------
        >>> import cassia_sc
        >>> plan = cassia_sc.run_batch(cassia_sc.loadmarker("processed"), tissue="blood",
        ...     species="human", model="any-model", dry_run=True, progress=False)
        >>> plan.table().columns[:3].tolist()
        ['cluster', 'main_cell_type', 'sub_cell_types']
        """
        rows = [
            {
                "cluster": c.cluster,
                "main_cell_type": c.main_cell_type or "",
                "sub_cell_types": ", ".join(c.sub_cell_types),
                "possible_mixed_cell_types": ", ".join(c.possible_mixed_cell_types),
                "possible_tissues": ", ".join(c.possible_tissues),
                "key_markers": ", ".join(c.key_markers),
                "unsupported_markers": ", ".join(c.unsupported_markers),
                "markers": ", ".join(c.markers),
                "status": c.status,
                "validation": _VALIDATION_NAMES[c.validation_passed],
                "validation_feedback": c.validation_feedback,
                "iterations": c.iterations,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "requests": c.requests,
                "calls": c.calls,
                "cached_calls": c.cached_calls,
                "error": c.error or "",
                "ontology_term_id": c.ontology_term_id or "",
                "ontology_label": c.ontology_label or "",
                "ontology_score": _number_or_nan(c.ontology_score),
                "subtype_ontology_term_ids": ", ".join(c.subtype_ontology_term_ids),
                "agreement": _number_or_nan(c.agreement),
            }
            for c in self.clusters
        ]
        return h5_safe_frame(pd.DataFrame(rows, columns=TABLE_COLUMNS))

    @classmethod
    def from_uns(cls, record: Mapping[str, Any]) -> BatchResult:
        """Rebuild a batch from what ``tl.annotate`` stored in ``uns[key_added]``.

        Parameters
        ----------
        record
            ``adata.uns[key_added]``, with ``params``, ``results`` and ``conversations``.

        Returns
        -------
        BatchResult
            The clusters in their order, with their conversations.

        Examples
        --------
        >>> result = cassia_sc.BatchResult.from_uns(adata.uns["cassia"])  # doctest: +SKIP
        """
        stored = {c["cluster"]: c for c in json.loads(record.get("conversations") or "[]")}
        verdicts = {name: verdict for verdict, name in _VALIDATION_NAMES.items()}
        clusters = []
        for row in record["results"].to_dict("records"):
            turns = sorted(
                (
                    (turn.get("step", 0), agent, turn)
                    for agent in ("annotator", "validator", "formatter")
                    for turn in stored.get(row["cluster"], {}).get(agent, [])
                ),
                key=lambda item: item[0],
            )
            clusters.append(
                ClusterResult(
                    cluster=str(row["cluster"]),
                    markers=_split(row["markers"]),
                    status=row["status"],
                    main_cell_type=row["main_cell_type"] or None,
                    sub_cell_types=_split(row["sub_cell_types"]),
                    possible_mixed_cell_types=_split(row["possible_mixed_cell_types"]),
                    possible_tissues=_split(row["possible_tissues"]),
                    key_markers=_split(row["key_markers"]),
                    unsupported_markers=_split(row["unsupported_markers"]),
                    validation_passed=verdicts.get(row["validation"]),
                    validation_feedback=row["validation_feedback"],
                    iterations=int(row["iterations"]),
                    error=row["error"] or None,
                    conversation=[
                        Turn(
                            agent,
                            t["role"],
                            t["content"],
                            t.get("cached", False),
                            t.get("prompt_tokens", 0),
                            t.get("completion_tokens", 0),
                        )
                        for _, agent, t in turns
                    ],
                    prompt_tokens=int(row["prompt_tokens"]),
                    completion_tokens=int(row["completion_tokens"]),
                    requests=int(row["requests"]),
                    calls=int(row.get("calls", 0)),
                    cached_calls=int(row.get("cached_calls", 0)),
                    ontology_term_id=row.get("ontology_term_id") or None,
                    ontology_label=row.get("ontology_label") or None,
                    ontology_score=_number_or_none(row.get("ontology_score")),
                    subtype_ontology_term_ids=_split(row.get("subtype_ontology_term_ids", "")),
                    agreement=_number_or_none(row.get("agreement")),
                )
            )
        return cls(clusters=clusters, settings=dict(record.get("params", {})))

    def full(self) -> pd.DataFrame:
        """Return the summary table plus each cluster's conversation.

        Returns
        -------
        pandas.DataFrame
            :meth:`summary` with ``Validation Feedback``, ``Raw Reply`` and
            ``Conversation History`` columns.
        """
        table = self.summary()
        table["Validation Feedback"] = [c.validation_feedback for c in self.clusters]
        table["Raw Reply"] = [c.raw_reply or "" for c in self.clusters]
        table["Conversation History"] = [c.conversation_text() for c in self.clusters]
        return table

    def conversations(self) -> list[dict[str, Any]]:
        """Return each cluster's conversations, agent by agent, JSON-ready.

        Returns
        -------
        list of dict
            Per cluster: ``cluster``, ``status``, ``error`` and the ``annotator``,
            ``validator`` and ``formatter`` turns.
        """
        return [
            {
                "cluster": c.cluster,
                "status": c.status,
                "error": c.error,
                "annotator": c.turns("annotator"),
                "validator": c.turns("validator"),
                "formatter": c.turns("formatter"),
            }
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
