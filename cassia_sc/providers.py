"""Where each provider lives and how it differs: one registry of endpoints and their quirks.

A provider quirk (base URL, key variable, how reasoning effort is sent, which optional
parameters a server may refuse) is an entry here, never a branch in the client.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import CassiaError, MissingAPIKeyError

#: Key variable for a provider given as a base URL (Ollama, vLLM, LM Studio, a proxy).
CUSTOM_KEY_ENV = "CASSIA_API_KEY"
# Local servers ignore the key, but the SDK insists on one.
_LOCAL_PLACEHOLDER_KEY = "no-key-needed"


def _reasoning_effort(effort: str) -> dict[str, Any]:
    return {"reasoning_effort": effort}


def _reasoning_object(effort: str) -> dict[str, Any]:
    return {"reasoning": {"effort": effort}}


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
    """

    base_url: str
    key_variable: str
    reasoning: Callable[[str], dict[str, Any]] = _reasoning_effort
    max_tokens_field: str = "max_tokens"


#: Provider name -> its endpoint and quirks.
PROVIDERS: dict[str, Provider] = {
    "openrouter": Provider(
        "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", reasoning=_reasoning_object
    ),
    "openai": Provider(
        "https://api.openai.com/v1", "OPENAI_API_KEY", max_tokens_field="max_completion_tokens"
    ),
    "anthropic": Provider("https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY"),
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
    """Where requests go, which environment variable holds the key, and the provider's quirks.

    Attributes
    ----------
    provider
        The provider as the user gave it: a name or a base URL.
    base_url
        Base URL of the OpenAI-compatible API.
    key_variable
        Environment variable read when no ``api_key`` is given.
    quirks
        The provider's entry (a generic one for a base URL).
    """

    provider: str
    base_url: str
    key_variable: str
    quirks: Provider

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
        >>> resolve_endpoint("https://me:s3cret-word@proxy.example.org/v1").display_url
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
        The base URL, the key variable and the quirks to use.

    Examples
    --------
    >>> resolve_endpoint("openrouter").key_variable
    'OPENROUTER_API_KEY'
    >>> resolve_endpoint("http://127.0.0.1:8000/v1").is_loopback
    True
    """
    name = provider.strip()
    known = PROVIDERS.get(name.lower())
    if known is not None:
        return Endpoint(name.lower(), known.base_url, known.key_variable, known)
    if urlsplit(name).scheme in {"http", "https"} and urlsplit(name).hostname:
        base_url = name.rstrip("/")
        return Endpoint(name, base_url, CUSTOM_KEY_ENV, Provider(base_url, CUSTOM_KEY_ENV))
    raise CassiaError(
        f"Unknown provider {provider!r}: use one of {list(PROVIDERS)} or the base URL of an "
        "OpenAI-compatible server, e.g. 'http://localhost:11434/v1'."
    )


def resolve_api_key(endpoint: Endpoint, api_key: str | None = None) -> str:
    """Find the API key: ``api_key`` if given, else the endpoint's environment variable.

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
    if os.environ.get(endpoint.key_variable):
        return os.environ[endpoint.key_variable]
    if endpoint.is_loopback:
        return _LOCAL_PLACEHOLDER_KEY
    raise MissingAPIKeyError(
        f"No API key for provider {endpoint.provider!r}: set the environment variable "
        f"{endpoint.key_variable} (or pass api_key= in Python)."
    )
