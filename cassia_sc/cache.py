"""On-disk cache of model replies, addressed by a hash of the full request.

A re-run of the same batch is served from here without a single HTTP request, and a run
that was interrupted resumes by replaying the calls it had completed. Entries never hold
an API key: the key is not part of the request that is hashed or stored.

The cache is a convenience, never a reason to lose a reply that was paid for: a folder that
cannot be written (read-only, full, a file in its place) is warned about once, and the run
goes on without storing what it could not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._io import atomic_write_text

logger = logging.getLogger("cassia_sc")

#: Environment variable that moves the default cache folder.
CACHE_DIR_ENV = "CASSIA_SC_CACHE_DIR"
_FORMAT = 1
# Characters of an error kept in the warning: never a whole entry.
_SHOWN_ERROR = 200


def default_cache_dir() -> Path:
    """Return the folder used when no ``cache_dir`` is given.

    ``$CASSIA_SC_CACHE_DIR`` when set; otherwise the user's cache folder:
    ``$XDG_CACHE_HOME/cassia_sc`` or ``~/.cache/cassia_sc`` on Linux,
    ``~/Library/Caches/cassia_sc`` on macOS, ``%LOCALAPPDATA%/cassia_sc/Cache`` on Windows.

    Returns
    -------
    pathlib.Path
        The folder (not created here).

    Examples
    --------
    >>> from cassia_sc.cache import default_cache_dir
    >>> default_cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/cassia_sc')
    """
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "cassia_sc" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "cassia_sc"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cassia_sc"


def request_key(request: Mapping[str, Any]) -> str:
    """Hash a request (base URL, model, messages, parameters) into a cache key.

    Parameters
    ----------
    request
        JSON-serialisable description of the call; it must not contain the API key.

    Returns
    -------
    str
        A 64-character hexadecimal SHA-256 digest.
    """
    canonical = json.dumps(
        {"format": _FORMAT, **request}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Replies stored one JSON file per request under ``directory``.

    Writes go to a temporary file that is then renamed, so concurrent threads and
    processes, and a process killed mid-write, never leave a torn entry behind. A write that
    fails is warned about once per cache, and skipped.

    Parameters
    ----------
    directory
        Where the entries live; created on first write.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self._warned = False
        self._warn_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored reply for ``key``, or None when there is none (or it is unreadable).

        Parameters
        ----------
        key
            From :func:`request_key`.

        Returns
        -------
        dict or None
            The entry's ``reply`` mapping, whose ``content`` is text (its text and numbers
            as stored: the client cleans them).
        """
        try:
            reply = json.loads(self._path(key).read_text(encoding="utf-8"))["reply"]
            if not isinstance(reply["content"], str):
                raise TypeError(f"its content is {type(reply['content']).__name__}, not text")
            return reply
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:  # the folder, not this entry: said once
            self._warn_once("read", err)
            return None
        except (ValueError, KeyError, TypeError) as err:
            logger.warning(
                "Ignoring an unreadable cache entry %s (%s).",
                self._path(key),
                str(err)[:_SHOWN_ERROR],
            )
            return None

    def put(self, key: str, request: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        """Store ``reply`` for ``key``, with the request it answers for inspection.

        Parameters
        ----------
        key
            From :func:`request_key`.
        request
            The request that was hashed into ``key``.
        reply
            JSON-serialisable reply (content and usage).

        Returns
        -------
        bool
            Whether it was stored. When it could not be (a folder that cannot be written, a
            full disk, text that cannot be encoded), the first such failure of this cache
            is logged as a warning and the others are skipped quietly.
        """
        entry = {"format": _FORMAT, "request": request, "reply": reply}
        try:
            text = json.dumps(entry, ensure_ascii=False, allow_nan=False)
            atomic_write_text(self._path(key), text, fsync=False)
        except (OSError, ValueError) as err:  # UnicodeEncodeError is a ValueError
            self._warn_once("write", err)
            return False
        return True

    def _warn_once(self, action: str, err: Exception) -> None:
        with self._warn_lock:
            first, self._warned = not self._warned, True
        if first:
            logger.warning(
                "Cannot %s the reply cache in %s (%s); going on without it where it fails "
                "(replies are kept, only not cached). Further cache errors are not shown.",
                action,
                self.directory,
                str(err)[:_SHOWN_ERROR],
            )

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.json")) if self.directory.is_dir() else 0
