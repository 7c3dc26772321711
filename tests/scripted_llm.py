"""A scripted model served on 127.0.0.1, and the settings that point cassia_sc at it.

The ``scripted_llm`` fixture of ``conftest.py`` is a :class:`ScriptedLLMFactory`; this
module holds it apart from pytest so that scripts outside the tests (the documentation
build, ``docs/make_report_screenshot.py``) start the very same server, with
:class:`TempFolders` in place of pytest's ``tmp_path_factory``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llm_server import DEFAULT_MODEL, Handler, LLMServer, RecordedRequest, Reply
from scripted_model import ScriptedModel

from cassia_sc import LLMClient

#: A ScriptedModel override: ``(request, markers) -> Reply``, or None for the default answer.
Override = Callable[[RecordedRequest, list[str]], Reply | None]


class TempDirs(Protocol):
    """What the factory needs of pytest's ``TempPathFactory``: new empty folders."""

    def mktemp(self, basename: str) -> Path:
        """Return a new, empty folder whose name starts with ``basename``."""
        ...


class TempFolders:
    """New empty folders under ``root``, as ``tmp_path_factory.mktemp`` makes them.

    Parameters
    ----------
    root
        An existing folder; the caller removes it (and everything made here) when done.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def mktemp(self, basename: str) -> Path:
        """Return a new, empty folder under :attr:`root` whose name starts with ``basename``."""
        return Path(tempfile.mkdtemp(prefix=f"{basename}-", dir=self.root))


@dataclass
class ScriptedLLM:
    """A scripted model served on 127.0.0.1, and the settings that point cassia_sc at it.

    Attributes
    ----------
    server
        The running :class:`llm_server.LLMServer`: its ``requests``, ``request_count``,
        ``max_concurrency``; its ``handler`` may be swapped during a test.
    cache_dir
        This server's cache folder, not yet created: every :meth:`options` and
        :meth:`client` share it (a second run is served from the cache) unless given
        another ``cache_dir``.
    model
        The model name sent, ``"test-model"``.
    """

    server: LLMServer
    cache_dir: Path
    model: str = DEFAULT_MODEL
    _clients: list[LLMClient] = field(default_factory=list, repr=False)

    @property
    def base_url(self) -> str:
        """The server's OpenAI-compatible base URL, the ``provider`` cassia_sc is given."""
        return self.server.base_url

    def options(self, **extra: Any) -> dict[str, Any]:
        """Keyword options of ``run_batch``, ``tl.annotate``, ``runCASSIA_batch`` and
        ``run_repeated`` that send every call here: ``model``, ``provider``, ``cache_dir``
        and ``progress=False``, updated with ``extra``."""
        settings = {
            "model": self.model,
            "provider": self.base_url,
            "cache_dir": self.cache_dir,
            "progress": False,
        }
        return settings | extra

    def client(self, **extra: Any) -> LLMClient:
        """An :class:`cassia_sc.LLMClient` for this server (``model``, ``provider``,
        ``cache_dir``, updated with ``extra``), closed when the test ends."""
        settings = {"model": self.model, "provider": self.base_url, "cache_dir": self.cache_dir}
        client = LLMClient(**(settings | extra))
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients made by :meth:`client`, then the server (idempotent)."""
        while self._clients:
            self._clients.pop().close()
        self.server.close()


class ScriptedLLMFactory:
    """Starts :class:`ScriptedLLM` servers on demand and closes them all on :meth:`close`.

    The ``scripted_llm`` fixture is one of these, closed at the end of the test; a fixture
    of a wider scope, or a script, can make its own, as a context manager.

    Parameters
    ----------
    temp_dirs
        Where each server's cache folder goes: pytest's ``tmp_path_factory``, or
        :class:`TempFolders` outside pytest.
    """

    def __init__(self, temp_dirs: TempDirs) -> None:
        self._temp_dirs = temp_dirs
        self._started: list[ScriptedLLM] = []

    def __call__(
        self,
        cell_types: Mapping[str, str] | None = None,
        *,
        annotator: Override | None = None,
        validator: Override | None = None,
        formatter: Override | None = None,
        scorer: Override | None = None,
        booster: Override | None = None,
        delay: float = 0.0,
        handler: Handler | None = None,
    ) -> ScriptedLLM:
        """Start a server answering as ``ScriptedModel(cell_types, annotator=..., ...)``.

        Parameters
        ----------
        cell_types, annotator, validator, formatter, scorer, booster, delay
            As for :class:`scripted_model.ScriptedModel`.
        handler
            A raw ``llm_server`` handler answering instead of a ScriptedModel (it may wrap
            one); then none of the ScriptedModel parameters may be given.
        """
        if handler is None:
            handler = ScriptedModel(
                cell_types,
                annotator=annotator,
                validator=validator,
                formatter=formatter,
                scorer=scorer,
                booster=booster,
                delay=delay,
            )
        elif cell_types or annotator or validator or formatter or scorer or booster or delay:
            raise TypeError("scripted_llm: give either handler= or the ScriptedModel parameters")
        cache_dir = self._temp_dirs.mktemp("scripted-llm") / "cache"
        llm = ScriptedLLM(server=LLMServer(handler), cache_dir=cache_dir)
        self._started.append(llm)
        return llm

    def close(self) -> None:
        """Close every client and server started so far."""
        while self._started:
            self._started.pop().close()

    def __enter__(self) -> ScriptedLLMFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
