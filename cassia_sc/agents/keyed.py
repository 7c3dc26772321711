"""One structured call that gives a name under each of a list of keys.

It is asked again while a reply leaves some out, with what was wrong: the grouper's names
by cluster and the harmoniser's by label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import CallCancelled, LLMError
from ..fields import keyed_text_schema
from ..llm import LLMClient, Reply
from .context import Messages

#: Reads a reply's names by key, and says what is wrong with it (None: nothing).
Reader = Callable[[str, Sequence[str]], tuple[dict[str, str], str | None]]


@dataclass(frozen=True)
class KeyedAnswer:
    """What the replies named, and how the asking ended.

    Attributes
    ----------
    named
        The last reply's names by key.
    complete
        Whether that reply named every key as asked.
    replies
        Every reply, in order.
    problems
        What was wrong with each incomplete reply, in words for the model.
    failed
        The call's error when it could not be made (then ``named`` is the last reply's).
    """

    named: dict[str, str]
    complete: bool
    replies: tuple[Reply, ...]
    problems: tuple[str, ...]
    failed: LLMError | CallCancelled | None = None


def ask_for_names(
    client: LLMClient,
    messages: Messages,
    keys: Sequence[str],
    *,
    read: Reader,
    retry: Callable[[str], str],
    attempts: int,
    stop: threading.Event | None = None,
) -> KeyedAnswer:
    """Ask for a name under each of ``keys``, again with what was wrong, ``attempts`` times.

    Parameters
    ----------
    client
        The model client.
    messages
        The first request.
    keys
        The keys the reply's JSON object must have (its schema requires them).
    read
        Reads a reply (see :data:`Reader`).
    retry
        The user turn that sends a reply's problem back.
    attempts
        Replies asked for at most.
    stop
        Set to cancel.

    Returns
    -------
    KeyedAnswer
        The answer; a failed call is returned, not raised, for the caller to judge.
    """
    schema = keyed_text_schema(keys)
    replies: list[Reply] = []
    problems: list[str] = []
    named: dict[str, str] = {}
    for _ in range(attempts):
        try:
            reply = client.complete(messages, schema=schema, stop=stop)
        except (LLMError, CallCancelled) as err:
            return KeyedAnswer(named, False, tuple(replies), tuple(problems), err)
        replies.append(reply)
        named, problem = read(reply.content, keys)
        if problem is None:
            return KeyedAnswer(named, True, tuple(replies), tuple(problems))
        problems.append(problem)
        messages = [
            *messages,
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": retry(problem)},
        ]
    return KeyedAnswer(named, False, tuple(replies), tuple(problems))
