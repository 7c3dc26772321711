"""CASSIA's ``set_api_key`` and ``validate_api_keys``: a key set for the session, and checked.

:func:`set_api_key` puts a key in this process's environment, where every client of the
run reads it. :func:`validate_api_keys` asks each provider once whether it takes the key
(and has the model), with a request that costs no tokens where the provider allows it, and
remembers the keys it took for the rest of the session.

The key itself is never logged, returned, raised, cached or written anywhere: what is
remembered is a fingerprint of it (its SHA-256), in memory only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass

import openai

from ._keys import Default
from .errors import MissingAPIKeyError, UnknownProvider
from .providers import PROVIDERS, Endpoint, resolve_api_key, resolve_endpoint

logger = logging.getLogger("cassia_sc")

#: Seconds a check waits on the server, to connect and for each read: it asks for nothing
#: slow, so a server that takes longer is not one a run will get far with.
VALIDATION_TIMEOUT = 30.0
# What the 1-token check asks, where the model list cannot tell.
_PROBE = ({"role": "user", "content": "Reply: OK"},)
# Answers of a server that has no model list, rather than one that refused the key.
_NO_MODEL_LIST = frozenset({404, 405, 501})
# Answers that refuse the key itself.
_REFUSED = frozenset({401, 403})

# Successful checks of this session: (provider, base URL, key fingerprint, model or None).
_validated: set[tuple[str, str, str, str | None]] = set()
_validated_lock = threading.Lock()


@dataclass(frozen=True)
class KeyStatus:
    """What one check of a key found.

    Attributes
    ----------
    provider
        The provider as messages show it: its name, or its base URL without secrets.
    valid
        Whether the provider took the key, and has the model when one was asked about.
    reason
        Why not, in one line that names the variable to fix; ``""`` when valid.
    variable
        The environment variable the key came from; None when it was given as
        ``api_key=``, or when a server on this machine was asked without one.
    cached
        Whether it was known from an earlier check of this session, and nothing was sent.
    """

    provider: str
    valid: bool
    reason: str = ""
    variable: str | None = None
    cached: bool = False


def set_api_key(api_key: str, provider: str = Default.key_provider) -> None:
    """Set the API key of a provider for this Python process, as CASSIA's ``set_api_key``.

    The key goes into this process's environment only (``os.environ``): it does not
    persist after the session ends, it is not seen by other processes already running,
    and it is never written to any file. Set the variable in your shell, or keep it in a
    secrets manager, to have it in every session.

    Parameters
    ----------
    api_key
        The key. Spaces and line ends around it (from copying it) are dropped.
    provider
        ``"openai"`` (CASSIA's default here), ``"anthropic"``, ``"openrouter"``, or the base
        URL of an OpenAI-compatible server. A named provider's key goes into its variable
        (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``OPENROUTER_API_KEY``). A base URL's key
        goes into ``CUSTOMIZED_API_KEY``, as CASSIA does, and into ``CASSIA_API_KEY``, which
        cassia_sc reads first, so that the key set here is the one used; for
        ``api.deepseek.com`` also into ``DEEPSEEK_API_KEY``, as CASSIA does. Both base-URL
        variables serve every base URL: the last key set wins.

    Returns
    -------
    None
        The key is in this process's environment from now on.

    Raises
    ------
    ValueError
        When ``api_key`` is empty or holds spaces, control or non-ASCII characters, or when
        ``provider`` is none of the above (:class:`cassia_sc.errors.UnknownProvider`).

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.set_api_key("sk-example", provider="openai")  # doctest: +SKIP
    >>> cassia_sc.set_api_key("no-key", provider="http://localhost:11434/v1")  # doctest: +SKIP
    """
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError(
            "api_key must be the key, a non-empty string: set_api_key(api_key, provider)."
        )
    endpoint = _endpoint(provider, reminder="; the key comes first: set_api_key(api_key, provider)")
    key = api_key.strip()
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"api_key {problem}.")
    for variable in endpoint.key_variables:
        os.environ[variable] = key
    logger.info("Set %s for this session.", " and ".join(endpoint.key_variables))


def validate_api_keys(
    provider: str | None = None,
    api_key: str | None = None,
    force_revalidate: bool = False,
    verbose: bool = True,
    *,
    model: str | None = None,
    timeout: float = VALIDATION_TIMEOUT,
) -> bool | dict[str, bool]:
    """Check that providers take their keys, with one cheap request each, as CASSIA's.

    Each provider is asked once, with its key:

    - ``GET {base_url}/models`` (the ``openai`` package's ``client.models.list()``) where
      the model list needs the key (OpenAI, Anthropic, DeepSeek, vLLM, most servers): free,
      no tokens, and it lists the models, so that ``model`` is checked by the same request.
    - OpenRouter lists its models to anyone, so that list says nothing about a key: its
      key's own route (``GET /key``, free) is asked instead; with ``model``, one 1-token
      chat completion checks the key and the model at once.
    - A model missing from the list (an alias such as Ollama's ``llama3.1`` for
      ``llama3.1:latest``, or a server with no list) is asked for with one 1-token chat
      completion, which settles it; a server with no list and no ``model`` cannot be
      checked, and is reported so.

    A check that succeeded is remembered for the session, per provider, base URL, key
    and model, and not sent again; a check that failed is not remembered.

    Parameters
    ----------
    provider
        ``"openai"``, ``"anthropic"``, ``"openrouter"`` or a base URL. None checks every
        named provider whose key variable is set.
    api_key
        A key to check instead of the one in the environment (which it does not change).
        Only with ``provider``: a key is never sent to providers it was not made for
        (CASSIA would send it to all three).
    force_revalidate
        Ask again even when the key was checked before in this session.
    verbose
        Log each outcome on the ``"cassia_sc"`` logger: a success at INFO, a failure at
        WARNING in one line that names the variable to fix. Never the key.
    model
        A model the key must reach, as the provider spells it; only with ``provider``,
        as model names differ between providers.
    timeout
        Seconds to wait for the server, to connect and for each read.

    Returns
    -------
    bool or dict
        With ``provider``: whether the key was taken (and the model found). Without: each
        checked provider's name -> that bool (empty when no key is set).

    Raises
    ------
    ValueError
        When ``provider`` is neither a known name nor a base URL
        (:class:`cassia_sc.errors.UnknownProvider`), or ``api_key`` or ``model`` is given
        without it. A bad or missing key, a missing model, an unreachable server: False.

    Examples
    --------
    >>> import cassia_sc
    >>> cassia_sc.validate_api_keys("openrouter")  # doctest: +SKIP
    True
    >>> cassia_sc.validate_api_keys()  # every provider whose key is set  # doctest: +SKIP
    {'openrouter': True, 'openai': False}
    """
    if provider is None:
        if api_key is not None or model is not None:
            raise ValueError(
                "validate_api_keys: api_key= and model= need provider=, the provider they are for."
            )
        named = [name for name, entry in PROVIDERS.items() if os.environ.get(entry.key_variable)]
        if not named and verbose:
            variables = ", ".join(entry.key_variable for entry in PROVIDERS.values())
            logger.warning(
                "No API key is set (%s): set one with cassia_sc.set_api_key(api_key, provider).",
                variables,
            )
        return {
            name: _report(
                check_api_key(name, force_revalidate=force_revalidate, timeout=timeout), verbose
            ).valid
            for name in named
        }
    status = check_api_key(
        provider, api_key, model=model, force_revalidate=force_revalidate, timeout=timeout
    )
    return _report(status, verbose).valid


def check_api_key(
    provider: str,
    api_key: str | None = None,
    *,
    model: str | None = None,
    force_revalidate: bool = False,
    timeout: float = VALIDATION_TIMEOUT,
) -> KeyStatus:
    """Check one provider's key, as :func:`validate_api_keys` does, and say why not.

    Parameters
    ----------
    provider
        ``"openai"``, ``"anthropic"``, ``"openrouter"`` or a base URL.
    api_key
        A key to check instead of the one in the environment.
    model
        A model the key must reach.
    force_revalidate
        Ask again even when the key was checked before in this session.
    timeout
        Seconds to wait for the server, to connect and for each read.

    Returns
    -------
    KeyStatus
        Whether the key was taken, and otherwise why, naming the variable to fix.

    Raises
    ------
    ValueError
        When ``provider`` is neither a known name nor a base URL, ``model`` is not a
        non-empty string or ``timeout`` is not positive.
    """
    endpoint = _endpoint(provider)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError("model must be a model name, e.g. 'gpt-4o-mini', or None.")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}.")
    name = endpoint.display_name
    variable = None if api_key is not None else _variable_set(endpoint)
    source = "the api_key given" if api_key is not None else f"the key in {variable}"
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        return KeyStatus(name, False, f"{name}: the api_key given is empty or not a string.")
    try:
        key = resolve_api_key(endpoint, api_key)
    except MissingAPIKeyError:
        return KeyStatus(name, False, f"{name}: no API key: {_how_to_set(endpoint)}.")
    problem = _key_problem(key)
    if problem:
        return KeyStatus(name, False, f"{name}: {source} {problem}.", variable)
    if variable is None and api_key is None:
        source = "the request without a key"  # a server on this machine, none set
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    remembered = (endpoint.provider, endpoint.base_url, fingerprint)
    if not force_revalidate:
        with _validated_lock:
            if (*remembered, model) in _validated:
                return KeyStatus(name, True, "", variable, cached=True)
    if api_key is not None:
        fix = "check the key"
    elif variable is not None:
        fix = _how_to_set(endpoint, f"put a valid key in {variable}")
    else:
        fix = _how_to_set(endpoint)
    url = endpoint.display_url
    words = _Words(name, source, fix, "the server" if url == name else f"the server at {url}")
    reason, refused = _ask(endpoint, key, model, timeout, words)
    with _validated_lock:
        if reason is None:
            _validated.update({(*remembered, model), (*remembered, None)})
        elif refused:  # the key itself: nothing checked with it holds any more
            _validated.difference_update({c for c in _validated if c[:3] == remembered})
        else:
            _validated.discard((*remembered, model))
    return KeyStatus(name, reason is None, reason or "", variable)


def clear_validation_cache(provider: str | None = None) -> None:
    """Forget the keys checked in this session, so that the next check asks again.

    Parameters
    ----------
    provider
        Forget only this provider's (a name or a base URL); None forgets all.

    Raises
    ------
    ValueError
        When ``provider`` is neither a known name nor a base URL.
    """
    with _validated_lock:
        if provider is None:
            _validated.clear()
            return
        endpoint = _endpoint(provider)
        _validated.difference_update(
            {c for c in _validated if c[:2] == (endpoint.provider, endpoint.base_url)}
        )


# ------------------------------------------------------------- the models a server lists

# Base URL -> the model ids its list holds (None: it has no list), asked once per process.
_model_lists: dict[str, frozenset[str] | None] = {}
_model_lists_lock = threading.Lock()


def served_models(
    endpoint: Endpoint, api_key: str, *, timeout: float = 10.0
) -> frozenset[str] | None:
    """Return the models a server lists (``GET {base_url}/models``), or None without a list.

    Asked once per base URL and process, and remembered from a key check
    (:func:`validate_api_keys`) that listed them already. A server that cannot be reached,
    or answers in another shape, has no list here: the run's own calls say what is wrong.

    Parameters
    ----------
    endpoint
        The server.
    api_key
        Its key (a placeholder for a local server).
    timeout
        Seconds to wait.

    Returns
    -------
    frozenset of str or None
        The listed model ids.
    """
    with _model_lists_lock:
        if endpoint.base_url in _model_lists:
            return _model_lists[endpoint.base_url]
    try:
        with openai.OpenAI(
            api_key=api_key, base_url=endpoint.base_url, timeout=timeout, max_retries=0
        ) as client:
            listed = _model_ids(getattr(client.models.list(), "data", None))
    except (openai.OpenAIError, ValueError):
        listed = None
    _remember_list(endpoint.base_url, listed)
    return _model_lists[endpoint.base_url]


def _remember_list(base_url: str, listed: Collection[str] | None) -> None:
    with _model_lists_lock:
        _model_lists[base_url] = frozenset(listed) if listed else None


# -------------------------------------------------------------------------------- helpers


def _endpoint(provider: object, *, reminder: str = "") -> Endpoint:
    """Resolve ``provider``, with an error that never repeats what was given (a key?)."""
    try:
        if isinstance(provider, str):
            return resolve_endpoint(provider)
    except UnknownProvider:
        pass
    names = ", ".join(repr(name) for name in PROVIDERS)
    raise UnknownProvider(
        f"provider must be one of {names} or the http(s) base URL of an OpenAI-compatible "
        f"server{reminder}."
    ) from None


def _variable_set(endpoint: Endpoint) -> str | None:
    """Return the key variable the key is read from, or None when none is set."""
    return next((v for v in endpoint.key_variables if os.environ.get(v)), None)


def _how_to_set(endpoint: Endpoint, what: str = "") -> str:
    what = what or f"set {endpoint.variables_text}"
    return f"{what}, e.g. with cassia_sc.set_api_key(api_key, provider={endpoint.display_name!r})"


def _key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a key (an HTTP header cannot carry it), or None."""
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        return "holds spaces, control or non-ASCII characters: copy the key again"
    return None


def _report(status: KeyStatus, verbose: bool) -> KeyStatus:
    if verbose:
        if not status.valid:
            logger.warning("%s", status.reason)
        elif status.cached:
            logger.info("%s: key already checked in this session.", status.provider)
        else:
            logger.info("%s: key accepted.", status.provider)
    return status


@dataclass(frozen=True)
class _Words:
    """What a reason says: the provider, where the key came from, how to fix it, the server."""

    name: str
    source: str
    fix: str
    server: str


def _ask(
    endpoint: Endpoint, key: str, model: str | None, timeout: float, words: _Words
) -> tuple[str | None, bool]:
    """Ask the server: why the check failed (None: it passed), and whether for the key."""
    check = endpoint.quirks.key_check
    # The provider's own key headers go on the client, never into a request's options,
    # which the SDK may log at DEBUG level.
    with openai.OpenAI(
        api_key=key,
        base_url=endpoint.base_url,
        timeout=timeout,
        max_retries=0,
        default_headers=check.headers(key) or None,
    ) as client:
        if model is not None and not check.lists_models:
            return _probe(client, endpoint, model, words)
        try:
            if check.lists_models:
                page = client.models.list(extra_query=dict(check.query) or None)
                listed = _model_ids(getattr(page, "data", None))
                _remember_list(endpoint.base_url, listed)
            else:
                client.get(check.path, cast_to=object)
                listed = None
        except openai.APIStatusError as err:
            status = err.status_code
            if not (check.lists_models and status in _NO_MODEL_LIST):
                return _failure(status, model, words), status in _REFUSED
            if model is None:
                return (
                    f"{words.name}: {words.server} has no model list to check the "
                    f"key with (HTTP {status}); give model= to check it with a 1-token request.",
                    False,
                )
            return _probe(client, endpoint, model, words)
        except openai.APIConnectionError as err:
            return _unreachable(err, words), False
        except (openai.OpenAIError, ValueError):
            return f"{words.name}: {words.server} answered in an unknown shape.", False
        if model is None or (listed is not None and model in listed):
            return None, False
        # Not listed (an alias, or a list in another shape): the model's own answer settles it.
        return _probe(client, endpoint, model, words)


def _probe(
    client: openai.OpenAI, endpoint: Endpoint, model: str, words: _Words
) -> tuple[str | None, bool]:
    """Ask ``model`` for one token: any answer means the key and the model are fine."""
    body = {"model": model, "messages": list(_PROBE), endpoint.quirks.max_tokens_field: 1}
    try:
        client.post("/chat/completions", body=body, cast_to=object)
    except openai.APIStatusError as err:
        return _failure(err.status_code, model, words), err.status_code in _REFUSED
    except openai.APIConnectionError as err:
        return _unreachable(err, words), False
    except (openai.OpenAIError, ValueError):
        return f"{words.name}: {words.server} answered in an unknown shape.", False
    return None, False


def _model_ids(data: object) -> Collection[str] | None:
    """Return the ``id`` of each model of a listed page, or None when it holds no list."""
    if not isinstance(data, list):
        return None
    return {i for i in (getattr(m, "id", None) for m in data) if isinstance(i, str)}


def _failure(status: int, model: str | None, words: _Words) -> str:
    """Say why a check failed with an HTTP error, without the server's text (the key?)."""
    if status in _REFUSED:
        return f"{words.name}: the provider refused {words.source} (HTTP {status}); {words.fix}."
    if status == 404 and model is not None:
        return (
            f"{words.name}: {words.server} does not have model {model!r} (HTTP 404); "
            "check the model name, or the base URL."
        )
    if status == 400 and model is not None:
        return (
            f"{words.name}: the server refused a 1-token request to model {model!r} "
            "(HTTP 400); check the model name."
        )
    if status == 429:
        return f"{words.name}: rate limited or out of credits (HTTP 429); try again later."
    if status >= 500:
        return f"{words.name}: the server failed (HTTP {status}); try again later."
    return f"{words.name}: {words.server} answered HTTP {status}."


def _unreachable(err: openai.APIConnectionError, words: _Words) -> str:
    kind = "timed out waiting for" if isinstance(err, openai.APITimeoutError) else "could not reach"
    return f"{words.name}: {kind} {words.server}; check the base URL and the network."
