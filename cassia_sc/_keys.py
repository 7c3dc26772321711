"""Every name cassia_sc reads or writes, and every shared default, in one place.

Readers and writers (``tl``, ``pl``, ``get``, ``export``, ``h5ad``, the command line) take
their names from here, so an ``obs`` column, an ``uns`` entry or a CSV column is spelled
once. A new name is a line in this module.
"""

from __future__ import annotations

from typing import Final


class Key:
    """Names of the AnnData entries and the output files (in the spirit of squidpy's ``Key``).

    Examples
    --------
    >>> from cassia_sc._keys import Key
    >>> Key.obs.celltype("cassia"), Key.uns.results
    ('cassia_celltype', 'results')
    """

    class obs:
        """Columns of ``adata.obs`` written by ``tl.annotate``, prefixed by ``key_added``."""

        @staticmethod
        def label(key_added: str, label: str) -> str:
            """Return the column of one label kind, ``"celltype"`` or ``"subtype"``."""
            return f"{key_added}_{label}"

        @staticmethod
        def celltype(key_added: str) -> str:
            """Return the column of each cell's main cell type."""
            return f"{key_added}_celltype"

        @staticmethod
        def subtype(key_added: str) -> str:
            """Return the column of each cell's most likely subtype."""
            return f"{key_added}_subtype"

        @staticmethod
        def ontology_term_id(key_added: str) -> str:
            """Return the column of each cell's Cell Ontology term."""
            return f"{key_added}_celltype_ontology_term_id"

        @staticmethod
        def agreement(key_added: str) -> str:
            """Return the column of the share of repeated runs agreeing with each cell's label."""
            return f"{key_added}_agreement"

        @staticmethod
        def cell_state(key_added: str) -> str:
            """Return the column of the state taken off each cell's label (activated, ...)."""
            return f"{key_added}_cell_state"

        @staticmethod
        def score(key_added: str) -> str:
            """Return the column of the judge's 0-100 score of each cell's label."""
            return f"{key_added}_score"

        @staticmethod
        def celltype_initial(key_added: str) -> str:
            """Return the column of each cell's main cell type before the annotation boost."""
            return f"{key_added}_celltype_initial"

        @staticmethod
        def celltype_harmonised(key_added: str) -> str:
            """Return the column of each cell's main cell type named alike across inputs."""
            return f"{key_added}_celltype_harmonised"

        @staticmethod
        def celltype_broad(key_added: str) -> str:
            """Return the column of each cell's broad lineage (``tl.levels``)."""
            return f"{key_added}_celltype_broad"

        @staticmethod
        def celltype_detailed(key_added: str) -> str:
            """Return the column of each cell's detailed type (``tl.levels``)."""
            return f"{key_added}_celltype_detailed"

        @staticmethod
        def celltype_very_detailed(key_added: str) -> str:
            """Return the column of each cell's most specific type and state (``tl.levels``)."""
            return f"{key_added}_celltype_very_detailed"

    class uns:
        """Keys of ``adata.uns`` read, and the sub-keys of the entry ``tl.annotate`` writes."""

        #: Where :func:`scanpy.tl.rank_genes_groups` leaves its result by default.
        markers: Final = "rank_genes_groups"
        params: Final = "params"
        results: Final = "results"
        conversations: Final = "conversations"
        usage: Final = "usage"
        versions: Final = "versions"
        uncertainty: Final = "uncertainty"
        evaluation: Final = "evaluation"
        #: The recipe of the bundled example file (``datasets.pbmc68k_example_path``).
        example: Final = "cassia_sc_example"

    class obsm:
        """Embeddings in ``adata.obsm``."""

        @staticmethod
        def basis(basis: str) -> str:
            """Return the key of an embedding, e.g. ``"X_umap"`` for ``"umap"``."""
            return f"X_{basis}"

    class files:
        """Suffixes of the files of ``runCASSIA_batch``, by kind.

        The first four are CASSIA's; ``record`` is ours (settings and every turn with its
        tokens), kept apart so that CASSIA's readers find only what they expect.
        """

        suffixes: Final = {
            "summary": "_summary.csv",
            "full": "_full.csv",
            "conversations": "_conversations.json",
            "report": "_report.html",
            "record": "_record.json",
        }

    class cassia:
        """CASSIA's shapes: its conversations JSON and the full CSV's history sections."""

        #: Keys of one cluster's entry in the conversations JSON.
        annotations: Final = "annotations"
        validations: Final = "validations"
        formatting: Final = "formatting"
        scoring: Final = "scoring"
        #: The title of each key's section in the ``Conversation History`` column.
        sections: Final = {
            "annotations": "Final Annotation Agent",
            "validations": "Coupling Validator",
            "formatting": "Formatting Agent",
            "scoring": "Scoring Agent",
        }
        #: Between sections; CASSIA 1.4.0 also reads the second, which no reply contains.
        section_separator: Final = " | "
        safe_section_separator: Final = " |||SECTION||| "
        #: What CASSIA's ``add_cassia_to_anndata`` writes: ``obs`` prefix and ``uns`` key.
        obs_prefix: Final = "CASSIA_"
        uns: Final = "CASSIA"
        #: The columns of ``runCASSIA_subclusters``' table (``{output_name}.csv``), in order:
        #: the subcluster, its two most likely types, its markers and the reasoning.
        subcluster_columns: Final = (
            "Result ID",
            "main_cell_type",
            "sub_cell_type",
            "key_markers",
            "reason",
        )

    class csv:
        """Columns of the summary CSV that are CASSIA's own, in its order."""

        cluster: Final = "Cluster ID"
        main_cell_type: Final = "Predicted General Cell Type"
        sub_cell_types: Final = "Predicted Detailed Cell Type"
        possible_mixed_cell_types: Final = "Possible Mixed Cell Types"
        marker_number: Final = "Marker Number"
        markers: Final = "Marker List"
        iterations: Final = "Iterations"
        model: Final = "Model"
        provider: Final = "Provider"
        tissue: Final = "Tissue"
        species: Final = "Species"
        #: The columns the full CSV adds to the summary.
        validation_feedback: Final = "Validation Feedback"
        raw_reply: Final = "Raw Reply"
        conversation: Final = "Conversation History"
        #: CASSIA's ``merge_annotations`` columns, by ``detail_level`` (``tl.levels`` too).
        levels: Final = {
            "broad": "Merged_Grouping_1",
            "detailed": "Merged_Grouping_2",
            "very_detailed": "Merged_Grouping_3",
        }

    #: Separator of list values in tables, as CASSIA writes them.
    list_separator: Final = ", "


class Default:
    """Defaults shared by the Python functions and the command line."""

    key_added: Final = "cassia"
    provider: Final = "openrouter"
    #: The provider of ``set_api_key`` when none is given (CASSIA's default there).
    key_provider: Final = "openai"
    n_genes: Final = 50
    max_workers: Final = 4
    temperature: Final = 0.0
    validator_involvement: Final = "v1"
    ranking_method: Final = "avg_log2FC"
    max_retries: Final = 3
    timeout: Final = 120.0
    #: Tokens a reply may have: room for a long step-by-step answer (a local model wrote
    #: over 4,000 for one).
    max_tokens: Final = 4096
    #: Clusters whose share of agreeing repeated runs is below this are flagged for review.
    agreement_threshold: Final = 0.6
    basis: Final = "umap"
    n_runs: Final = 1
    #: The annotation boost: clusters scored below this are boosted (CASSIA's threshold).
    boost_below: Final = 75.0
    #: Look-up rounds of the boost at most, the final answer included.
    boost_rounds: Final = 5
    #: Genes looked up per round at most; more are cut and the model is told.
    boost_max_genes: Final = 50
    #: What a plan assumes: the share of clusters a boost will take on.
    boost_share: Final = 0.25
    #: Seconds between the first polls of a provider batch (the wait grows to a minute).
    batch_poll_interval: Final = 10.0


class Limit:
    """Caps on what is written (``uns``, CSV, JSON, report); the reply cache keeps replies whole.

    A reply of megabytes or a label of a hundred thousand characters is cut, saying so.
    """

    #: Characters of a label: a main cell type, a subtype, any item of a list.
    label: Final = 200
    #: Characters of any other text value: feedback, an error, a reasoning.
    text: Final = 5_000
    #: Items of a list; the markers the model was given are kept whole.
    items: Final = 200
    #: Characters of one message of a conversation, and of a raw reply.
    message: Final = 50_000
