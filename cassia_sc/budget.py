"""A run's budget: what it has spent, and the request that would pass the limit, refused.

One :class:`Budget` serves every client of a run (the annotation, the judge, the boost,
and the files of a run over several), so that ``max_cost`` and ``max_tokens_total`` bound
the whole. Each request that misses the cache is admitted first, at its estimated tokens
(its prompt, counted, and a reply as long as the run's replies so far) and their price; a
request that would pass a limit is refused with :class:`~cassia_sc.errors.BudgetReached`,
and its cluster is left ``not_run`` with the reason. What was asked is in the cache, so
that the same run, started again with a larger budget, goes on from there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .costs import CHARS_PER_TOKEN, DEFAULT_REPLY_TOKENS, Price, dollars_text
from .errors import BudgetReached, CassiaError
from .pricing import PriceBook


@dataclass(frozen=True)
class Admission:
    """A request let through: what was set aside for it until its reply is counted."""

    tokens: int
    dollars: float


class Budget:
    """What a run may spend, and what it has spent so far (thread-safe).

    Parameters
    ----------
    max_cost
        Dollars the run may spend at most; None: no limit. Needs every model's price.
    max_tokens_total
        Tokens (prompt and completion) the run may use at most; None: no limit.
    prices
        Where the models' prices come from; None: none are known (the spend in dollars
        is then unknown, and ``max_cost`` cannot be used).

    Examples
    --------
    >>> budget = Budget(max_tokens_total=1000)
    >>> admitted = budget.admit(prompt_characters=2000, price=None)
    >>> budget.spend(admitted, prompt_tokens=500, completion_tokens=300, price=None)
    >>> budget.spent_tokens
    800
    """

    def __init__(
        self,
        *,
        max_cost: float | None = None,
        max_tokens_total: int | None = None,
        prices: PriceBook | None = None,
    ) -> None:
        if max_cost is not None and not max_cost > 0:
            raise CassiaError(f"max_cost must be a positive number of dollars, not {max_cost!r}.")
        if max_tokens_total is not None and not (
            isinstance(max_tokens_total, int) and max_tokens_total > 0
        ):
            raise CassiaError(
                f"max_tokens_total must be a positive whole number, not {max_tokens_total!r}."
            )
        self.max_cost = max_cost
        self.max_tokens_total = max_tokens_total
        self.prices = prices
        self.spent_tokens = 0
        self.spent_dollars: float | None = 0.0  # None once a reply of unknown price came
        self.replies = 0
        self._completion_tokens = 0
        self._held = Admission(0, 0.0)  # set aside for the requests on their way
        self._lock = threading.Lock()

    def price(self, model: str, provider: str) -> Price | None:
        """Return the price of ``model`` at ``provider``, or None when unknown.

        Raises
        ------
        CassiaError
            With ``max_cost``, when the price is unknown: the limit could not be kept.
        """
        found = self.prices.price(model, provider) if self.prices is not None else None
        if found is None and self.max_cost is not None:
            notes = "; ".join(self.prices.notes) if self.prices is not None else ""
            raise CassiaError(
                f"max_cost needs the price of {model!r}, which is unknown"
                + (f" ({notes})" if notes else "")
                + "; give it with prices= (--prices FILE)."
            )
        return found

    def admit(self, *, prompt_characters: int, price: Price | None) -> Admission:
        """Let a request through, or refuse it when it would pass a limit.

        Parameters
        ----------
        prompt_characters
            Characters of its messages.
        price
            Its model's price, as this request pays it (a batch's, where it is one).

        Returns
        -------
        Admission
            What is set aside for it; give it back with :meth:`spend` or :meth:`release`.

        Raises
        ------
        BudgetReached
            When the request would pass ``max_cost`` or ``max_tokens_total``.
        """
        prompt = -(-prompt_characters // CHARS_PER_TOKEN)
        with self._lock:
            reply = (
                self._completion_tokens // self.replies if self.replies else DEFAULT_REPLY_TOKENS
            )
            tokens = prompt + reply
            dollars = price.dollars(prompt, reply) if price is not None else 0.0
            if self.max_tokens_total is not None and (
                self.spent_tokens + self._held.tokens + tokens > self.max_tokens_total
            ):
                raise BudgetReached(
                    f"The budget of {self.max_tokens_total:,} tokens is reached "
                    f"({self.spent_tokens:,} used); this call was not sent."
                )
            spent = self.spent_dollars or 0.0
            if self.max_cost is not None and spent + self._held.dollars + dollars > self.max_cost:
                raise BudgetReached(
                    f"The budget of {dollars_text(self.max_cost)} is reached "
                    f"({dollars_text(spent)} spent); this call was not sent."
                )
            admitted = Admission(tokens, dollars)
            self._held = Admission(self._held.tokens + tokens, self._held.dollars + dollars)
            return admitted

    def release(self, admitted: Admission) -> None:
        """Give back what was set aside for a request that got no reply."""
        with self._lock:
            self._held = Admission(
                self._held.tokens - admitted.tokens, self._held.dollars - admitted.dollars
            )

    def spend(
        self,
        admitted: Admission,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        price: Price | None,
    ) -> None:
        """Count a reply's tokens (and their price) in place of what was set aside."""
        self.release(admitted)
        with self._lock:
            self.spent_tokens += prompt_tokens + completion_tokens
            self.replies += 1
            self._completion_tokens += completion_tokens
            if price is None:
                self.spent_dollars = None
            elif self.spent_dollars is not None:
                self.spent_dollars += price.dollars(prompt_tokens, completion_tokens)
