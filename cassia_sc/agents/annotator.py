"""The annotator: reasons from the markers to a cell type and ends with a JSON answer.

A formatting call is made only when no JSON can be recovered from its reply; from the
second round on it revises its answer with the validator's feedback. The formatter only
converts: when it finds no cell type in the reply ("unknown cell"), the cluster fails with
the reply kept, rather than passing "unknown" off as the model's answer.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ..errors import StepFailed
from ..fields import Field, answer_schema
from ..llm import clean_model_text
from ..plausibility import implausibility
from ..prompts import render
from ..replies import Annotation, extract_json_object, parse_annotation
from ..replies import unsupported_markers as find_unsupported
from .context import ClusterContext, ClusterTask, Messages

#: The JSON schema of the answer, from the fields declared part of it.
ANNOTATION_SCHEMA = answer_schema()

# What a formatter says when the text it was given holds no cell type.
_NO_CELL_TYPE = re.compile(
    r"(unknown|unclear|undetermined|indeterminate|not (determined|specified|given|stated|clear)"
    r"|none|n/?a|null|no answer)( cell)?( types?| populations?)?",
    re.IGNORECASE,
)


class Annotator:
    """Annotate a cluster from its markers; revise when the validator rejected the answer.

    Examples
    --------
    >>> from cassia_sc.agents import Annotator, ClusterTask
    >>> task = ClusterTask("0", ("CD3D", "CD3E"), species="human", tissue="blood")
    >>> [m["role"] for m in Annotator().plan(task)]
    ['system', 'user']
    """

    name = "annotator"
    #: Completion tokens of a usual reply, for a dry run's cost estimate
    #: (reasoning through the markers, then the JSON answer).
    reply_tokens = 600
    fields: tuple[Field, ...] = ()  # its answer's fields are core fields

    def plan(self, task: ClusterTask) -> Messages:
        """Return the annotator's opening messages (system and task)."""
        return [
            {
                "role": "system",
                "content": render(
                    "annotator_system", tissue_blind=task.tissue_blind, parent=task.parent
                ),
            },
            {
                "role": "user",
                "content": render(
                    "annotator_task",
                    species=task.species,
                    tissue=task.tissue,
                    markers=task.markers,
                    additional_info=task.additional_info,
                    parent=task.parent,
                ),
            },
        ]

    def __call__(self, context: ClusterContext) -> None:
        """Ask for (or revise) the annotation and store it on the result."""
        result = context.result
        if context.round == 1:
            messages = self.plan(context.task)
        else:
            revision = render(
                "annotator_revision",
                feedback=context.implausible or result.validation_feedback,
                unsupported=result.unsupported_markers,
            )
            messages = [
                *context.state[self.name],
                {"role": "assistant", "content": context.annotation_text},
                {"role": "user", "content": revision},
            ]
        # A new answer, not yet reviewed: the last round's verdict was about the last one.
        result.validation_passed = result.validation_feedback = None
        reply = context.ask(self.name, messages, continues=context.round > 1)
        context.state[self.name] = messages
        context.annotation_text = reply.content
        answer = _read_annotation(reply.content, context)
        if answer is None:
            raise StepFailed(
                "No annotation could be read from the model's reply, even after a formatting call.",
                raw_reply=reply.content,
            )
        result.main_cell_type = answer.main_cell_type
        result.sub_cell_types = list(answer.sub_cell_types)
        result.possible_mixed_cell_types = list(answer.possible_mixed_cell_types)
        result.possible_tissues = list(answer.possible_tissues)
        result.key_markers = list(answer.key_markers)
        result.unsupported_markers = find_unsupported(answer.key_markers, context.task.markers)
        # An answer that is no cell type goes back with the reason before any review (the
        # pipeline sees it rejected), and no validator is asked about it.
        task = context.task
        context.implausible = implausibility(
            answer.main_cell_type, tissue=task.tissue, species=task.species
        )


def _read_annotation(text: str, context: ClusterContext) -> Annotation | None:
    """Read the JSON answer from the reply; only when there is none, ask for it formatted.

    A formatted answer without a cell type ("unknown cell", empty) is no answer: None.
    """
    answer = parse_annotation(extract_json_object(text))
    if answer is not None:
        return _cleaned(answer)
    system = render("formatter_system", tissue_blind=context.task.tissue_blind)
    formatted = context.ask(
        "formatter",
        [{"role": "system", "content": system}, {"role": "user", "content": text}],
        schema=ANNOTATION_SCHEMA,
    )
    answer = parse_annotation(extract_json_object(formatted.content))
    if answer is None or _says_no_cell_type(answer.main_cell_type):
        return None
    return _cleaned(answer)


def _says_no_cell_type(main_cell_type: str) -> bool:
    """Whether a formatter's cell type says it found none ("unknown cell", "N/A", blank)."""
    bare = main_cell_type.strip(" .!:;-_*\"'`\t\n")
    return not bare or _NO_CELL_TYPE.fullmatch(bare) is not None


def _cleaned(answer: Annotation) -> Annotation | None:
    """Return the answer without the control characters JSON escapes may have put in.

    None when no cell type is left.
    """

    def clean(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for v in (clean_model_text(v).strip() for v in values) if v)

    main_cell_type = clean_model_text(answer.main_cell_type).strip()
    if not main_cell_type:
        return None
    return replace(
        answer,
        main_cell_type=main_cell_type,
        sub_cell_types=clean(answer.sub_cell_types),
        possible_mixed_cell_types=clean(answer.possible_mixed_cell_types),
        possible_tissues=clean(answer.possible_tissues),
        key_markers=clean(answer.key_markers),
    )
