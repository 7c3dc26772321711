"""Crash-safe file writing: write beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never half.

    Parameters
    ----------
    path
        The file to write; its folder is created when missing.
    data
        The new content.
    fsync
        Flush to disk before the rename, so the file also survives a power cut (a killed
        process cannot lose it either way).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``text`` (UTF-8), atomically; see :func:`atomic_write_bytes`.

    Parameters
    ----------
    path
        The file to write.
    text
        The new content.
    fsync
        As in :func:`atomic_write_bytes`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
