"""What a run will cost, step by step: calls, tokens and, where a price is known, dollars.

A dry run (:func:`cassia_sc.plan`, ``--dry-run``) fills a :class:`CostEstimate`: one
:class:`StepCost` per step and model (annotator, validator, scorer, booster), with the
prompt tokens of the prompts it built and the completion tokens each step's replies
usually take (``reply_tokens`` of the agent: a guess, as a reply's length is known only
once it is written). :mod:`cassia_sc.pricing` finds the prices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import pandas as pd

#: Prompt characters per token of English prose and gene lists, for estimates only.
CHARS_PER_TOKEN = 4
#: Completion tokens assumed for a step that does not say how long its replies are.
DEFAULT_REPLY_TOKENS = 400
_PER_MILLION = 1e6


@dataclass(frozen=True)
class Price:
    """What a model costs, in dollars per million tokens (as providers show their prices).

    Attributes
    ----------
    prompt
        Dollars per million prompt (input) tokens.
    completion
        Dollars per million completion (output) tokens.
    source
        Where the price comes from, for the reader, e.g. ``"OpenRouter's model list"``.

    Examples
    --------
    >>> Price(0.15, 0.60, "prices=").dollars(1_000_000, 500_000)
    0.45
    """

    prompt: float
    completion: float
    source: str = ""

    def dollars(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Return the cost of these tokens, in dollars."""
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / _PER_MILLION


@dataclass(frozen=True)
class StepCost:
    """The calls of one step with one model, and what they cost.

    Attributes
    ----------
    step
        The agent: ``"annotator"``, ``"validator"``, ``"scorer"``, ``"booster"``, ...
    model, provider
        Where the calls go.
    calls
        How many calls (a fraction when only a share of clusters is expected to need it).
    prompt_tokens, completion_tokens
        Estimated tokens of those calls.
    dollars
        Their cost, or None when no price is known.
    """

    step: str
    model: str
    provider: str
    calls: float
    prompt_tokens: int
    completion_tokens: int
    dollars: float | None = None


@dataclass(frozen=True)
class CostEstimate:
    """A run's estimated calls, tokens and cost, step by step.

    Attributes
    ----------
    steps
        One entry per step and model, in the order the steps run.
    notes
        Where the prices come from, or why one is unknown; what the estimate assumes.

    Examples
    --------
    >>> estimate = CostEstimate((StepCost("annotator", "m", "openrouter", 10, 9000, 6000),))
    >>> estimate.priced(lambda model, provider: Price(1.0, 2.0, "prices=")).dollars
    0.021
    """

    steps: tuple[StepCost, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every step."""
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of every step."""
        return sum(s.completion_tokens for s in self.steps)

    @property
    def dollars(self) -> float | None:
        """The whole cost in dollars, or None unless every step has a price."""
        costs = [s.dollars for s in self.steps]
        if not costs or any(c is None for c in costs):
            return None
        return sum(c for c in costs if c is not None)

    def plus(self, steps: Iterable[StepCost], *, notes: Iterable[str] = ()) -> CostEstimate:
        """Return this estimate with more steps (added to an entry of the same step and model).

        Parameters
        ----------
        steps
            The steps to add.
        notes
            Notes to add.

        Returns
        -------
        CostEstimate
            A new estimate; prices are dropped (price it again).
        """
        merged: dict[tuple[str, str, str], StepCost] = {}
        for s in (*self.steps, *steps):
            key = (s.step, s.model, s.provider)
            known = merged.get(key)
            merged[key] = (
                replace(s, dollars=None)
                if known is None
                else StepCost(
                    s.step,
                    s.model,
                    s.provider,
                    known.calls + s.calls,
                    known.prompt_tokens + s.prompt_tokens,
                    known.completion_tokens + s.completion_tokens,
                )
            )
        added = tuple(n for n in notes if n not in self.notes)
        return CostEstimate(tuple(merged.values()), self.notes + added)

    def for_model(self, model: str, provider: str | None = None) -> CostEstimate:
        """Return the same calls sent to another model (another run of ``models=[...]``)."""
        steps = tuple(
            replace(s, model=model, provider=provider or s.provider, dollars=None)
            for s in self.steps
        )
        return CostEstimate(steps, self.notes)

    def priced(
        self, price_of: Callable[[str, str], Price | None], *, notes: Iterable[str] = ()
    ) -> CostEstimate:
        """Return the estimate with each step's cost, from ``price_of(model, provider)``.

        Parameters
        ----------
        price_of
            The price of a model at a provider, or None when unknown.
        notes
            Notes to add (where the prices came from, why one is unknown).

        Returns
        -------
        CostEstimate
            A new estimate.
        """
        steps = []
        for s in self.steps:
            price = price_of(s.model, s.provider)
            cost = None if price is None else price.dollars(s.prompt_tokens, s.completion_tokens)
            steps.append(replace(s, dollars=cost))
        added = tuple(n for n in notes if n not in self.notes)
        return CostEstimate(tuple(steps), self.notes + added)

    def table(self) -> pd.DataFrame:
        """Return one row per step and model: calls, tokens and dollars (NaN when unknown).

        Returns
        -------
        pandas.DataFrame
            Columns ``step``, ``model``, ``provider``, ``calls``, ``prompt_tokens``,
            ``completion_tokens``, ``dollars``.
        """
        columns = ["step", "model", "provider", "calls", "prompt_tokens", "completion_tokens"]
        rows = [[getattr(s, c) for c in columns] + [s.dollars] for s in self.steps]
        frame = pd.DataFrame(rows, columns=[*columns, "dollars"])
        return frame.astype({"dollars": float})

    def lines(self) -> list[str]:
        """Return the estimate as lines of text: one per step, then the total and the notes.

        Returns
        -------
        list of str
            Ready to print.
        """
        several = len({(s.model, s.provider) for s in self.steps}) > 1
        width = max((len(s.step) for s in self.steps), default=0)
        shown = []
        for s in self.steps:
            who = f" ({s.model})" if several else ""
            shown.append(
                f"  {s.step:<{width}}  {_calls(s.calls)}{who}: {s.prompt_tokens:,} prompt + "
                f"~{s.completion_tokens:,} completion tokens, {dollars_text(s.dollars)}"
            )
        total = self.dollars
        if total is not None:
            shown.append(f"  total: about {dollars_text(total)}")
        elif any(s.dollars is not None for s in self.steps):
            known = sum(s.dollars for s in self.steps if s.dollars is not None)
            shown.append(f"  total: at least {dollars_text(known)} (a price is unknown)")
        return shown + [f"  ({note})" for note in self.notes]


def estimate_step(
    step: str,
    model: str,
    provider: str,
    *,
    calls: float,
    prompt_characters: float,
    reply_tokens: float,
) -> StepCost:
    """Return a step's estimate from its calls, prompt characters and tokens per reply.

    Parameters
    ----------
    step, model, provider
        As in :class:`StepCost`.
    calls
        How many calls.
    prompt_characters
        Characters of all their prompts.
    reply_tokens
        Completion tokens of one reply.

    Returns
    -------
    StepCost
        Without a price.
    """
    return StepCost(
        step,
        model,
        provider,
        calls,
        int(-(-prompt_characters // CHARS_PER_TOKEN)),
        round(calls * reply_tokens),
    )


def dollars_text(dollars: float | None) -> str:
    """Show dollars as people read them: ``$0.42``, ``$0.0031``, ``price unknown``."""
    if dollars is None:
        return "price unknown"
    if dollars >= 1 or dollars == 0:
        return f"${dollars:,.2f}"
    return f"${dollars:.2g}" if dollars < 0.01 else f"${dollars:.3f}"


def _calls(calls: float) -> str:
    count = f"{calls:,.0f}" if float(calls).is_integer() else f"~{calls:,.1f}"
    return f"{count} call{'' if calls == 1 else 's'}"
