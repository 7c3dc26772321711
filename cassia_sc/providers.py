"""Where each provider lives and how it differs: one registry of endpoints and their quirks.

A provider quirk (base URL, key variable, how reasoning effort is sent, which optional
parameters a server may refuse) is an entry here, never a branch in the client.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import MissingAPIKeyError, UnknownProvider

logger = logging.getLogger("cassia_sc")

#: Key variable for a provider given as a base URL (Ollama, vLLM, LM Studio, a proxy).
CUSTOM_KEY_ENV = "CASSIA_API_KEY"
#: CASSIA's key variable for a base URL (what its ``set_api_key`` writes), read after ours.
CASSIA_CUSTOM_KEY_ENV = "CUSTOMIZED_API_KEY"
#: Hosts with a key variable of their own, read before the base URL's two (as CASSIA does).
HOST_KEY_VARIABLES: dict[str, str] = {"api.deepseek.com": "DEEPSEEK_API_KEY"}
# Local servers ignore the key, but the SDK insists on one.
_LOCAL_PLACEHOLDER_KEY = "no-key-needed"
# The version of its API Anthropic's own routes (its model list) ask for.
_ANTHROPIC_VERSION = "2023-06-01"


def _reasoning_effort(effort: str) -> dict[str, Any]:
    return {"reasoning_effort": effort}


def _reasoning_object(effort: str) -> dict[str, Any]:
    return {"reasoning": {"effort": effort}}


def _no_headers(api_key: str) -> dict[str, str]:
    return {}


def _anthropic_headers(api_key: str) -> dict[str, str]:
    # Its model list reads the key from x-api-key only, never from the Bearer header.
    return {"x-api-key": api_key, "anthropic-version": _ANTHROPIC_VERSION}


@dataclass(frozen=True)
class KeyCheck:
    """How a provider's key is checked without spending tokens: one GET that needs the key.

    Attributes
    ----------
    path
        Path under the base URL, e.g. ``"/models"``.
    lists_models
        Whether the path answers the model list in OpenAI's shape, so that the same request
        tells whether a model is there. False where the model list is public (OpenRouter):
        listing would say nothing about the key, so another path is asked.
    headers
        Extra headers the path needs, made from the key.
    query
        Query parameters, e.g. a page size large enough for the whole list.
    """

    path: str = "/models"
    lists_models: bool = True
    headers: Callable[[str], dict[str, str]] = _no_headers
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Provider:
    """A known provider: its endpoint, its key variable and how it takes options.

    Attributes
    ----------
    base_url
        Base URL of its OpenAI-compatible API.
    key_variable
        Environment variable read when no ``api_key`` is given.
    reasoning
        Turns a reasoning effort (``"low"``, ...) into the request fields it expects.
    max_tokens_field
        The request field that caps a reply's tokens: ``max_tokens`` for most servers,
        ``max_completion_tokens`` for OpenAI, whose reasoning models refuse the former.
    key_check
        How :func:`cassia_sc.validate_api_keys` checks the key for free.
    lists_prices
        Whether its model list may carry prices (OpenRouter's ``pricing``), which a dry
        run reads for its cost; asked of any base URL, never of OpenAI's or Anthropic's.
    batch_api
        Its batch API (``"openai"``, ``"anthropic"``), taken by ``batch_api=True``; None
        when it has none (OpenRouter).
    batch_price
        The share of the list price a request sent in a batch costs, as the provider
        states it (half, for OpenAI and Anthropic).
    """

    base_url: str
    key_variable: str
    reasoning: Callable[[str], dict[str, Any]] = _reasoning_effort
    max_tokens_field: str = "max_tokens"
    key_check: KeyCheck = KeyCheck()
    lists_prices: bool = True
    batch_api: str | None = None
    batch_price: float = 1.0


#: Provider name -> its endpoint and quirks.
PROVIDERS: dict[str, Provider] = {
    "openrouter": Provider(
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        reasoning=_reasoning_object,
        # Its model list answers without a key; its key endpoint does not.
        key_check=KeyCheck(path="/key", lists_models=False),
    ),
    "openai": Provider(
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        max_tokens_field="max_completion_tokens",
        lists_prices=False,
        batch_api="openai",
        batch_price=0.5,
    ),
    "anthropic": Provider(
        "https://api.anthropic.com/v1/",
        "ANTHROPIC_API_KEY",
        # Its list comes 20 models a page unless asked for more (1000 at most).
        key_check=KeyCheck(headers=_anthropic_headers, query=(("limit", "1000"),)),
        lists_prices=False,
        batch_api="anthropic",
        batch_price=0.5,
    ),
}

#: Optional request fields a server may refuse (named in its HTTP 400 message) -> the body
#: fields that carry them; the first one names the parameter when it is dropped.
OPTIONAL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "response_format": ("response_format",),
    "json_schema": ("response_format",),
    "temperature": ("temperature",),
    "reasoning": ("reasoning", "reasoning_effort"),
    "max_tokens": ("max_tokens", "max_completion_tokens"),
    "max_completion_tokens": ("max_tokens", "max_completion_tokens"),
    # vLLM and others refuse a cap larger than the context left after the prompt.
    "maximum context length": ("max_tokens", "max_completion_tokens"),
}

# User-info parts shorter than this are names ("proxy", "api"), not secrets.
_SHORTEST_SECRET = 4


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, which environment variables hold the key, and the provider's quirks.

    Attributes
    ----------
    provider
        The provider as the user gave it: a name or a base URL.
    base_url
        Base URL of the OpenAI-compatible API.
    key_variables
        Environment variables read, in this order, when no ``api_key`` is given: the first
        that is set holds the key. One for a named provider; for a base URL ours
        (``CASSIA_API_KEY``) then CASSIA's (``CUSTOMIZED_API_KEY``), after the host's own
        where it has one (``DEEPSEEK_API_KEY`` for ``api.deepseek.com``).
    quirks
        The provider's entry (a generic one for a base URL).
    """

    provider: str
    base_url: str
    key_variables: tuple[str, ...]
    quirks: Provider

    @property
    def key_variable(self) -> str:
        """The variable the key is read from: the first of :attr:`key_variables` that is set.

        When none is set, the first, which is the one to set. Messages about a key name
        this one, so that a refused key is looked for where it came from.
        """
        return next((v for v in self.key_variables if os.environ.get(v)), self.key_variables[0])

    @property
    def display_name(self) -> str:
        """The provider as messages show it: its name, or its base URL with no secret in it."""
        return self.provider if self.provider in PROVIDERS else self.display_url

    @property
    def variables_text(self) -> str:
        """The key variables as messages name them, in the order they are read."""
        *others, last = self.key_variables
        return f"{', '.join(others)} or {last}" if others else last

    @property
    def is_loopback(self) -> bool:
        """Whether the server runs on this machine, where no key is needed."""
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def display_url(self) -> str:
        """The base URL as messages show it: any user-info (``user:secret@``) redacted.

        Examples
        --------
        >>> user_info = "me:" + "not-a-password"  # as a proxy's URL may carry it
        >>> resolve_endpoint(f"https://{user_info}@proxy.example.org/v1").display_url
        'https://[redacted]@proxy.example.org/v1'
        """
        parts = urlsplit(self.base_url)
        if "@" not in parts.netloc:
            return self.base_url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"[redacted]@{host}"))

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the base URL's user-info holds that must never be shown, as given and decoded."""
        parts = urlsplit(self.base_url)
        if "@" not in parts.netloc:
            return ()
        userinfo = parts.netloc.rpartition("@")[0]
        found = {userinfo, *userinfo.split(":", 1)}
        found |= {unquote(part) for part in found}
        return tuple(sorted(s for s in found if len(s) >= _SHORTEST_SECRET))

    def reasoning_fields(self, effort: str) -> Mapping[str, Any]:
        """Return the request fields that ask this provider for ``effort``.

        Parameters
        ----------
        effort
            ``"low"``, ``"medium"`` or ``"high"``.

        Returns
        -------
        Mapping
            E.g. ``{"reasoning": {"effort": "low"}}`` on OpenRouter.
        """
        return self.quirks.reasoning(effort)


def resolve_endpoint(provider: str) -> Endpoint:
    """Turn a provider name or base URL into an :class:`Endpoint`.

    Parameters
    ----------
    provider
        ``"openrouter"``, ``"openai"``, ``"anthropic"`` (its OpenAI-compatible endpoint), or
        the base URL of any OpenAI-compatible server, e.g. ``"http://localhost:11434/v1"``
        for Ollama.

    Returns
    -------
    Endpoint
        The base URL, the key variables and the quirks to use.

    Raises
    ------
    UnknownProvider
        When ``provider`` is neither a known name nor an http(s) base URL.

    Examples
    --------
    >>> resolve_endpoint("openrouter").key_variables
    ('OPENROUTER_API_KEY',)
    >>> resolve_endpoint("https://api.deepseek.com/v1").key_variables
    ('DEEPSEEK_API_KEY', 'CASSIA_API_KEY', 'CUSTOMIZED_API_KEY')
    >>> resolve_endpoint("http://127.0.0.1:8000/v1").is_loopback
    True
    """
    name = provider.strip()
    known = PROVIDERS.get(name.lower())
    if known is not None:
        return Endpoint(name.lower(), known.base_url, (known.key_variable,), known)
    parts = urlsplit(name)
    if parts.scheme in {"http", "https"} and parts.hostname:
        base_url = name.rstrip("/")
        own = HOST_KEY_VARIABLES.get(parts.hostname)
        variables = ((own,) if own else ()) + (CUSTOM_KEY_ENV, CASSIA_CUSTOM_KEY_ENV)
        return Endpoint(name, base_url, variables, Provider(base_url, variables[0]))
    raise UnknownProvider(
        f"Unknown provider {provider!r}: use one of {list(PROVIDERS)} or the base URL of an "
        "OpenAI-compatible server, e.g. 'http://localhost:11434/v1'."
    )


def resolve_api_key(endpoint: Endpoint, api_key: str | None = None) -> str:
    """Find the API key: ``api_key`` if given, else the first key variable that is set.

    For a base URL, ``CASSIA_API_KEY`` wins over ``CUSTOMIZED_API_KEY`` when both are set:
    it is this package's own variable, so whoever set it meant it for cassia_sc, while
    CASSIA's is one variable for every base URL and may be left over for another server.
    :func:`cassia_sc.set_api_key` writes both, so a key set in the session is read either
    way. The host's own variable (``DEEPSEEK_API_KEY``) wins over both, as in CASSIA.

    Parameters
    ----------
    endpoint
        From :func:`resolve_endpoint`.
    api_key
        An explicit key, which wins.

    Returns
    -------
    str
        The key (a placeholder for a server on this machine that needs none).

    Raises
    ------
    MissingAPIKeyError
        When there is no key and the server is not on this machine.
    """
    if api_key:
        return api_key
    found = {v: os.environ[v] for v in endpoint.key_variables if os.environ.get(v)}
    if found:
        variable, key = next(iter(found.items()))
        if len(set(found.values())) > 1:
            logger.warning("%s differ; using %s (read first).", " and ".join(found), variable)
        return key
    if endpoint.is_loopback:
        return _LOCAL_PLACEHOLDER_KEY
    raise MissingAPIKeyError(
        f"No API key for provider {endpoint.display_name!r}: set the environment variable "
        f"{endpoint.variables_text} (or pass api_key= in Python)."
    )


def display_name(provider: str) -> str:
    """Return the provider as results store and files show it: a base URL's secrets redacted.

    Parameters
    ----------
    provider
        A provider name or base URL.

    Returns
    -------
    str
        The name, or the base URL with any user-info replaced by ``[redacted]``; a value
        that is neither is returned as given (it is refused later, with its own message).

    Examples
    --------
    >>> user_info = "me:" + "not-a-password"
    >>> display_name(f"https://{user_info}@proxy.example.org/v1")
    'https://[redacted]@proxy.example.org/v1'
    """
    try:
        return resolve_endpoint(provider).display_name
    except UnknownProvider:
        return provider
