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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._io import atomic_write_text

logger = logging.getLogger("cassia_sc")

#: Environment variable that moves the default cache folder.
CACHE_DIR_ENV = "CASSIA_SC_CACHE_DIR"
_FORMAT = 1
# Characters of an error kept in the warning: never a whole entry.
_SHOWN_ERROR = 200
# Threads that write a batch's replies: creating a file is the kernel's work, done
# outside the GIL, and it is most of a write.
_WRITERS = min(4, os.cpu_count() or 1)


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

    def put(self, key: str, request: Mapping[str, Any], reply: Mapping[str, Any]) -> bool:
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

    def put_many(self, entries: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Store many replies (a provider batch's results), each as :meth:`put` does.

        Parameters
        ----------
        entries
            The ``(key, request, reply)`` of each; all are stored when this returns.
        """
        with ThreadPoolExecutor(_WRITERS, thread_name_prefix="cassia-sc-cache") as pool:
            list(pool.map(lambda entry: self.put(*entry), entries))

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
        return sum(is_entry for _, _, is_entry in _cache_files(self.directory))


# -- managing the folder: what it holds, and clearing it (``cassia-sc cache``) --------------
# Imported here, with the code that uses them, so that this part stays apart from the above.

import contextlib  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from ._io import STALE_AFTER  # noqa: E402

_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
_SHARD_NAME = re.compile(r"[0-9a-f]{2}")
_TEMPORARY_NAME = re.compile(r"\.[0-9a-f]{64}\.json\.[A-Za-z0-9_]{6,16}\.tmp")


@dataclass(frozen=True)
class CacheSummary:
    """What a cache folder holds.

    Attributes
    ----------
    directory
        The folder.
    entries
        Stored replies.
    size
        Their size on disk, in bytes.
    oldest, newest
        When the oldest and the newest entry were stored (seconds since the epoch), or
        None when there is none.
    temporaries
        Temporary files that interrupted writes left behind.
    """

    directory: Path
    entries: int
    size: int
    oldest: float | None
    newest: float | None
    temporaries: int


def _cache_files(directory: Path) -> Iterator[tuple[Path, os.stat_result, bool]]:
    """Each file of ours in the folder: its path, its stat and whether it is an entry."""
    if not directory.is_dir():
        return
    for shard in os.scandir(directory):
        if not (_SHARD_NAME.fullmatch(shard.name) and shard.is_dir(follow_symlinks=False)):
            continue
        for entry in os.scandir(shard.path):
            is_entry = bool(_ENTRY_NAME.fullmatch(entry.name))
            if not (is_entry or _TEMPORARY_NAME.fullmatch(entry.name)):
                continue  # not ours: never counted, never removed
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISREG(info.st_mode):
                yield Path(entry.path), info, is_entry


def cache_summary(directory: str | os.PathLike | None = None) -> CacheSummary:
    """Count the replies in a cache folder, and their size.

    Parameters
    ----------
    directory
        The folder; by default :func:`default_cache_dir`.

    Returns
    -------
    CacheSummary
        The folder, its entries, their size and age, and stale temporary files.

    Examples
    --------
    >>> from cassia_sc.cache import cache_summary
    >>> cache_summary().entries  # doctest: +SKIP
    1204
    """
    folder = Path(directory).expanduser() if directory is not None else default_cache_dir()
    entries, size, temporaries = 0, 0, 0
    times: list[float] = []
    for _, info, is_entry in _cache_files(folder):
        if is_entry:
            entries += 1
            size += info.st_size
            times.append(info.st_mtime)
        else:
            temporaries += 1
    return CacheSummary(
        folder, entries, size, min(times, default=None), max(times, default=None), temporaries
    )


def clear_cache(
    directory: str | os.PathLike | None = None, *, older_than: float | None = None
) -> tuple[int, int]:
    """Remove replies from a cache folder: all of them, or those stored long enough ago.

    Only the cache's own files are removed (entries, and temporary files that interrupted
    writes left); any other file in the folder is left alone.

    Parameters
    ----------
    directory
        The folder; by default :func:`default_cache_dir`.
    older_than
        Remove only the entries stored more than this many seconds ago; None removes all.

    Returns
    -------
    tuple of int
        The entries removed, and the bytes freed (temporary files included).

    Examples
    --------
    >>> from cassia_sc.cache import clear_cache
    >>> removed, freed = clear_cache(older_than=30 * 86400)  # doctest: +SKIP
    """
    folder = Path(directory).expanduser() if directory is not None else default_cache_dir()
    now = time.time()
    removed, freed = 0, 0
    for path, info, is_entry in list(_cache_files(folder)):
        age = now - info.st_mtime
        if is_entry and older_than is not None and age <= older_than:
            continue
        if not is_entry and age <= max(STALE_AFTER, older_than or 0):
            continue  # a write in progress
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += is_entry
        freed += info.st_size
    if folder.is_dir():
        for shard in os.scandir(folder):
            if _SHARD_NAME.fullmatch(shard.name) and shard.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(shard.path)
    return removed, freed
