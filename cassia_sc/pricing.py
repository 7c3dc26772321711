"""Model prices, for a dry run's cost in dollars: the user's table, else the provider's list.

A user-given table comes first (``prices=``, ``--prices``): ``{model: (prompt,
completion)}`` in dollars per million tokens, or a CSV or JSON file of it. Otherwise the
provider's own model list is asked (``GET {base_url}/models``) where it carries prices in
OpenRouter's shape (``"pricing": {"prompt": "0.00000015", "completion": "0.0000006"}``,
dollars per token); OpenRouter's list needs no key. A fetched list is kept a day in the
cache folder (``prices/``), so that dry runs in a row ask once, and an older copy is used
when the provider cannot be reached; ``CASSIA_SC_OFFLINE=1`` asks nothing. OpenAI's and
Anthropic's model lists carry no prices: give a table for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import openai
import pandas as pd

from ._io import atomic_write_text
from .cache import default_cache_dir
from .costs import Price
from .errors import CassiaError
from .providers import Endpoint, display_name, resolve_endpoint

logger = logging.getLogger("cassia_sc")

#: Prices as users give them: a mapping or the path of a CSV or JSON file.
PriceTable: TypeAlias = Mapping[str, Any] | str | os.PathLike
#: Seconds a fetched price list is reused before it is asked for again.
PRICE_LIST_MAX_AGE = 24 * 3600
#: Seconds to wait for a price list: a dry run must not hang on a network that is not there.
PRICE_LIST_TIMEOUT = 10.0
#: Set (to anything but "" or "0") to never ask a provider for prices: machines without a
#: network, where even looking a host up may hang. A list kept earlier is still used.
OFFLINE_ENV = "CASSIA_SC_OFFLINE"
_PER_MILLION = 1e6
_NO_KEY = "no-key-needed"  # the SDK insists on a key; public lists ignore it


def read_prices(prices: PriceTable | None) -> dict[str, Price]:
    """Read a user's price table into ``{model: Price}``.

    Parameters
    ----------
    prices
        ``{model: (prompt, completion)}`` or ``{model: {"prompt": ..., "completion": ...}}``
        in dollars per million tokens, or the path of a CSV file with columns ``model``,
        ``prompt`` and ``completion``, or of a JSON file holding such a mapping. None: no
        table.

    Returns
    -------
    dict
        Model name -> :class:`~cassia_sc.costs.Price`.

    Raises
    ------
    CassiaError
        When the table cannot be read, naming the entry or the file and what is expected.

    Examples
    --------
    >>> read_prices({"openai/gpt-4o-mini": (0.15, 0.60)})["openai/gpt-4o-mini"].completion
    0.6
    """
    if prices is None:
        return {}
    source = "prices="
    if isinstance(prices, str | os.PathLike):
        path = Path(prices).expanduser()
        source = path.name
        prices = _read_price_file(path)
    if not isinstance(prices, Mapping):
        raise CassiaError(
            "prices must map each model to (prompt, completion) dollars per million tokens, "
            f"not {type(prices).__name__}."
        )
    return {str(model): _price(model, value, source) for model, value in prices.items()}


def _read_price_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise CassiaError(f"Price file not found: {str(path)!r}.")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise CassiaError(f"Price file {str(path)!r} is not JSON: {err}.") from None
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:  # an empty file is a ValueError too
        raise CassiaError(f"Price file {str(path)!r} cannot be read as CSV: {err}.") from None
    missing = {"model", "prompt", "completion"} - set(table.columns)
    if missing:
        raise CassiaError(
            f"Price file {str(path)!r} needs the columns model, prompt and completion "
            f"(dollars per million tokens); it lacks {sorted(missing)}."
        )
    return {str(row.model): (row.prompt, row.completion) for row in table.itertuples(index=False)}


def _price(model: object, value: object, source: str) -> Price:
    """One entry of a user's table, checked."""
    if isinstance(value, Mapping):
        value = (value.get("prompt"), value.get("completion"))
    try:
        prompt, completion = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        prompt = completion = math.nan
    if not (prompt >= 0 and completion >= 0):  # also false for NaN
        raise CassiaError(
            f"The price of {model!r} must be (prompt, completion) in dollars per million "
            f"tokens, two numbers of at least 0, not {value!r}."
        )
    return Price(prompt, completion, source)


class PriceBook:
    """Finds each model's price: the user's table first, then the provider's model list.

    Parameters
    ----------
    prices
        A user's table (see :func:`read_prices`), or None.
    cache_dir
        Where fetched lists are kept; default :func:`cassia_sc.cache.default_cache_dir`.
    providers
        The providers as the run was given them (names or base URLs, None skipped): the
        estimate shows them redacted, and this maps them back to where to ask.
    timeout
        Seconds to wait for a list.

    Attributes
    ----------
    notes
        Where the prices came from, and why a price is unknown, for the reader.

    Examples
    --------
    >>> book = PriceBook({"my-model": (1.0, 2.0)})
    >>> book.price("my-model", "openrouter").prompt
    1.0
    """

    def __init__(
        self,
        prices: PriceTable | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        providers: Collection[str | None] = (),
        timeout: float = PRICE_LIST_TIMEOUT,
    ) -> None:
        self._table = read_prices(prices)
        self._folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._where = {display_name(p): p for p in providers if p}
        self._timeout = timeout
        self._lists: dict[str, dict[str, Price]] = {}
        self.notes: list[str] = []

    def price(self, model: str, provider: str) -> Price | None:
        """Return the price of ``model`` at ``provider``, or None (with a note saying why).

        Parameters
        ----------
        model
            The model's name.
        provider
            The provider's name or base URL (as shown or as given).

        Returns
        -------
        Price or None
            The price, in dollars per million tokens.
        """
        if model in self._table:
            self._note(f"prices of {model} from {self._table[model].source}")
            return self._table[model]
        try:
            endpoint = resolve_endpoint(self._where.get(provider, provider))
        except CassiaError:
            return None
        if not endpoint.quirks.lists_prices:
            self._note(
                f"{endpoint.display_name} publishes no prices in its model list; give them "
                "with prices= (--prices FILE)"
            )
            return None
        listed = self._list(endpoint)
        found = listed.get(model)
        if found is None and listed:
            self._note(f"{endpoint.display_name}'s model list has no price for {model!r}")
        return found

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _list(self, endpoint: Endpoint) -> dict[str, Price]:
        """Return the provider's prices: from the cache folder when fresh, else fetched."""
        if endpoint.base_url in self._lists:
            return self._lists[endpoint.base_url]
        digest = hashlib.sha256(endpoint.base_url.encode()).hexdigest()[:16]
        path = self._folder / "prices" / f"{digest}.json"
        kept = _read_kept(path)
        age = time.time() - kept["fetched"] if kept else math.inf
        where = endpoint.display_name
        offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
        if kept and (age <= PRICE_LIST_MAX_AGE or offline):
            found = kept["prices"]
        elif offline:
            self._note(f"{where}'s prices not asked for: {OFFLINE_ENV} is set")
            self._lists[endpoint.base_url] = {}
            return {}
        else:
            try:
                found = self._fetch(endpoint)
            except (openai.OpenAIError, ValueError) as err:
                found = kept["prices"] if kept else None
                reason = _reason(err)
                if found is None:
                    self._note(f"could not get {where}'s prices: {reason}")
                    self._lists[endpoint.base_url] = {}
                    return {}
                fetched = datetime.fromtimestamp(kept["fetched"], UTC).date()
                self._note(f"{where}'s prices of {fetched} (could not refresh them: {reason})")
            else:
                record = {"base_url": endpoint.display_url, "fetched": time.time(), "prices": found}
                try:
                    atomic_write_text(path, json.dumps(record), fsync=False)
                except OSError as err:  # a read-only cache: the estimate goes on
                    logger.info("Price list not kept in %s: %s", path, err)
        prices = {
            model: Price(prompt, completion, f"{where}'s model list")
            for model, (prompt, completion) in found.items()
        }
        if prices:
            self._note(f"prices from {where}'s model list")
        else:
            self._note(f"{where}'s model list carries no prices; give them with prices=")
        self._lists[endpoint.base_url] = prices
        return prices

    def _fetch(self, endpoint: Endpoint) -> dict[str, tuple[float, float]]:
        """Ask the provider for its model list; keep the models with a price."""
        key = next((os.environ[v] for v in endpoint.key_variables if os.environ.get(v)), _NO_KEY)
        with openai.OpenAI(
            api_key=key, base_url=endpoint.base_url, timeout=self._timeout, max_retries=0
        ) as client:
            payload = client.get("/models", cast_to=object)
        if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), list):
            raise ValueError("the model list is not in the usual shape")
        return dict(found for item in payload["data"] if (found := _listed_price(item)) is not None)


def _listed_price(item: object) -> tuple[str, tuple[float, float]] | None:
    """One model of a list with OpenRouter's ``pricing`` (dollars per token), or None."""
    if not isinstance(item, Mapping) or not isinstance(item.get("pricing"), Mapping):
        return None
    try:
        prompt = float(item["pricing"]["prompt"]) * _PER_MILLION
        completion = float(item["pricing"]["completion"]) * _PER_MILLION
    except (KeyError, TypeError, ValueError):
        return None
    if not (prompt >= 0 and completion >= 0):  # -1: priced per request by a router
        return None
    return str(item.get("id")), (prompt, completion)


def _read_kept(path: Path) -> dict[str, Any] | None:
    """Return a price list kept by an earlier dry run, or None when absent or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        prices = {str(m): (float(p), float(c)) for m, (p, c) in record["prices"].items()}
        return {"fetched": float(record["fetched"]), "prices": prices}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _reason(err: Exception) -> str:
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    if isinstance(err, openai.APITimeoutError):
        return "timed out"
    if isinstance(err, openai.APIConnectionError):
        return "cannot connect"
    return str(err)
