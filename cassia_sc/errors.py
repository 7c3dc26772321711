"""Exception types raised by cassia_sc, each with a message that says what to do."""

from __future__ import annotations


class CassiaError(Exception):
    """Base class of every error cassia_sc raises on purpose."""


class MarkerError(CassiaError, ValueError):
    """Marker input that cannot be read, or that holds nothing to annotate."""


class UnknownProvider(CassiaError, ValueError):
    """A provider that is neither a known name nor the http(s) base URL of a server."""


class MissingAPIKeyError(CassiaError):
    """No API key for the provider: neither ``api_key=`` nor its environment variable."""


class LLMError(CassiaError):
    """A model call failed after its retries; the cluster it was for is marked failed.

    Attributes
    ----------
    requests
        Requests the call sent before it failed (each one billed by most providers).
    prompt_tokens, completion_tokens
        Tokens the server reported for them (cut-off replies), paid all the same.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class FatalLLMError(LLMError):
    """A model call failed in a way that every other call would too; the run stops."""


class ProviderUnreachable(FatalLLMError):
    """No request of the run ever reached the provider: no network, a wrong base URL."""


class AuthenticationFailed(FatalLLMError):
    """The provider refused the API key (HTTP 401 or 403)."""


class ModelNotFound(FatalLLMError):
    """The provider does not know the model (HTTP 404, or a 400 that says so)."""


class BatchInterrupted(KeyboardInterrupt):
    """The batch was interrupted (Ctrl-C); ``result`` holds every cluster, finished or not."""

    def __init__(self, result: object) -> None:
        super().__init__("interrupted; the clusters that finished are kept in .result")
        self.result = result


class CallCancelled(CassiaError):
    """The run was stopped while this call waited or was being retried."""


class BudgetReached(CallCancelled):
    """A call was not sent: it would have passed the run's ``max_cost`` or ``max_tokens_total``."""


class OntologyUnavailable(CassiaError, ImportError):
    """The optional packages that hold the Cell Ontology are not installed."""

    def __init__(self, missing: str = "cellxgene-ontology-guide") -> None:
        super().__init__(
            f"mapping labels to the Cell Ontology needs {missing}: install the ontology "
            'extra, pip install -e ".[ontology]" in the cassia_sc clone'
        )


class StepFailed(CassiaError):
    """A step of a pipeline could not do its work for one cluster, which is marked failed.

    Parameters
    ----------
    message
        Why, for the cluster's ``error``.
    raw_reply
        The model's text that could not be used, kept for the user.
    """

    def __init__(self, message: str, *, raw_reply: str | None = None) -> None:
        super().__init__(message)
        self.raw_reply = raw_reply


class TransientFailure(Exception):
    """Inside the model client: a failed request worth another attempt; never escapes it.

    Parameters
    ----------
    message
        What failed.
    retry_after
        Seconds the server asked to wait, if it said.
    rate_limited
        Whether it was HTTP 429, which pauses every worker.
    unreachable
        Why the connection could not be made (refused, no route, unknown host), when it
        could not; None when the server was reached or the request timed out.
    timed_out
        Whether no whole reply came before the timeout.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limited: bool = False,
        unreachable: str | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.unreachable = unreachable
        self.timed_out = timed_out


class ParameterRefused(Exception):
    """Inside the model client: the endpoint refused an optional parameter; send again without."""


class EvidenceError(CassiaError, KeyError):
    """The data hold no such cluster, column, layer or raw; the message lists what they hold."""

    def __str__(self) -> str:  # a KeyError would show its message quoted
        return str(self.args[0]) if self.args else ""


class ReplyCutOff(TransientFailure):
    """Inside the model client: the reply was cut off by its token limit; asked again with more.

    Parameters
    ----------
    message
        What was cut off, and at which limit.
    prompt_tokens, completion_tokens
        The usage the server reported for the cut-off reply, which was paid for.
    context_full
        Why the reply stopped before its limit (see :func:`context_full_message`), if it
        did: then it is not asked again.
    """

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        context_full: str | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.context_full = context_full


def context_full_message(completion_tokens: int, room: int | None) -> str | None:
    """Say why a cut-off reply stopped before its room, or None if it filled the room.

    A server whose context is full (a llama-server slot) ends the reply with the same
    finish reason as ``max_tokens`` does, long before it: more room cannot help. An
    unreported usage (0) says nothing, so such a reply counts as one that filled its room;
    the margin allows for servers that count a few tokens differently.
    """
    if not room or not 0 < completion_tokens < 0.9 * room:
        return None
    return (
        f"the server ended the reply after {completion_tokens} tokens, before its "
        f"max_tokens={room}: the model's context is full, or the server caps replies itself "
        "(with llama-server, give each slot more context: a larger -c or a smaller -np)"
    )


class NotWritable(CassiaError, PermissionError):
    """A file or folder that cannot be written: read-only, missing, or on a read-only disk."""


class KeyAddedError(CassiaError, ValueError):
    """A ``key_added`` that would overwrite what cassia_sc did not write, or is no key at all."""


class FileBusy(CassiaError):
    """Another cassia-sc is writing the file, and waiting for it was not wanted."""
