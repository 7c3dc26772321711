"""Files we write, and text that leaves us.

Files are written beside their target under a temporary name, then renamed over it, so a
reader sees the old file or the new one, never half. They get the permissions that any
file the user writes would get: a new file honours the umask, a replaced one keeps its
mode. Temporary files that a killed process left behind are removed on the next write of
the same target. Text printed to a terminal or put in a spreadsheet cell is made inert.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path

from .errors import NotWritable

logger = logging.getLogger("cassia_sc")

#: A temporary file of ours older than this (seconds) is left over from a killed process:
#: no write of ours takes an hour.
STALE_AFTER = 3600.0

# Escape sequences a terminal acts on (CSI, OSC, DCS and the like, and two-character
# ones), then every control character but newline and tab, C1 controls included, and
# the bidirectional overrides that make text show other than it reads.
_ESCAPE_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # two-character sequences, or a lone ESC
)
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Spreadsheets run a cell that begins with these as a formula (or a DDE command).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# The random part of a temporary file's name (``.{name}.{random}.tmp``).
_TEMPORARY_PART = re.compile(r"[A-Za-z0-9_]{6,16}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never half.

    The file gets the mode ``open(path, "wb")`` would give it: that of the file it
    replaces, or for a new file what the umask allows. Temporary files of ``path`` that a
    killed process left (see :func:`remove_stale_temporaries`) are removed.

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
    remove_stale_temporaries(path)
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        keep_mode(temporary, path)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
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


def temporary_beside(path: str | os.PathLike) -> tuple[int, Path]:
    """Create an empty temporary file ``.{name}.{random}.tmp`` beside ``path``, open for writing.

    Unlike :func:`tempfile.mkstemp` (always mode 0600), the file is created as any file
    the user makes: mode 0666 less the umask (and the folder's default ACL).

    Parameters
    ----------
    path
        The target the temporary file will replace.

    Returns
    -------
    tuple of int and pathlib.Path
        The open file descriptor and the file's path.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary name beside {str(path)!r}.")


def keep_mode(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give ``temporary`` the mode of ``target`` when ``target`` exists (it is to replace it).

    Parameters
    ----------
    temporary
        The new file.
    target
        The file it replaces, if any.
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)


def remove_stale_temporaries(
    path: str | os.PathLike, *, older_than: float = STALE_AFTER
) -> tuple[int, int]:
    """Remove the temporary files of ``path`` that a killed or crashed write left behind.

    Only files named as :func:`temporary_beside` names them (``.{name}.{random}.tmp``,
    which :func:`tempfile.mkstemp` names alike) and last changed more than
    ``older_than`` seconds ago are removed; a warning says how many and how large.

    Parameters
    ----------
    path
        The target whose temporary files to look for, in its folder.
    older_than
        Age in seconds; 0 removes them all (only safe when no other process can be
        writing ``path``, e.g. under :func:`cassia_sc.h5ad.locked`).

    Returns
    -------
    tuple of int
        The number of files removed and their total size in bytes.
    """
    path = Path(path)
    # Matched piecewise: a pattern compiled for each name would cost more than the
    # write (re's cache holds 512, and a batch writes thousands of names).
    prefix, suffix = f".{path.name}.", ".tmp"
    deadline = time.time() - older_than
    removed, size = 0, 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0, 0
    for entry in entries:
        name = entry.name
        if not (
            name.startswith(prefix)
            and name.endswith(suffix)
            and _TEMPORARY_PART.fullmatch(name, len(prefix), len(name) - len(suffix))
        ):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (older_than > 0 and info.st_mtime > deadline):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed, size = removed + 1, size + info.st_size
    if removed:
        logger.warning(
            "Removed %d temporary file%s (%s) left beside %s by an interrupted write.",
            removed,
            "s" if removed > 1 else "",
            format_size(size),
            path.name,
        )
    return removed, size


def check_writable(path: str | os.PathLike, *, make_folders: bool = False) -> None:
    """Make sure ``path`` can be written as :func:`atomic_write_bytes` writes it, or say why not.

    A file to be replaced must not be read-only (no write permission for anyone: someone
    protected it), and its folder must take a new file: a file is created there and
    removed again, which also catches read-only file systems and administrators.

    Parameters
    ----------
    path
        The file to write.
    make_folders
        The writer creates missing folders: check the nearest existing one.

    Raises
    ------
    NotWritable
        With a message naming the file or folder, and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise NotWritable(f"{str(path)!r} is a folder; give a file name.")
    if path.exists():
        mode = path.stat().st_mode
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise NotWritable(
                f"{str(path)!r} is read-only: make it writable (chmod u+w) or write elsewhere."
            )
    folder = path.parent
    if make_folders:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.is_dir():
        raise NotWritable(f"No folder {str(folder)!r} to write {path.name} in; create it first.")
    try:
        handle, probe = temporary_beside(folder / path.name)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise NotWritable(f"Cannot write in the folder {str(folder)!r}: {reason}.") from None
    os.close(handle)
    probe.unlink(missing_ok=True)


def format_size(size: float) -> str:
    """Return a size in bytes as people read it.

    Parameters
    ----------
    size
        Bytes.

    Returns
    -------
    str
        E.g. ``"512 B"``, ``"4.9 MB"``.

    Examples
    --------
    >>> format_size(5_100_000), format_size(999)
    ('5.1 MB', '999 B')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def printable(text: str) -> str:
    r"""Return ``text`` safe to print to a terminal: no escape sequence, no control character.

    Terminal escape sequences (colours, cursor moves, window titles, OSC 52 clipboard
    writes, ...) are removed whole; other control characters but newline and tab, and
    bidirectional overrides, are removed.

    Parameters
    ----------
    text
        Anything that came from a model, a file or a user.

    Returns
    -------
    str
        The text, inert.

    Examples
    --------
    >>> printable("\x1b]52;c;aGk=\x07T cell\x1b[31m!\x07")
    'T cell!'
    """
    return _CONTROL_CHARACTERS.sub("", _ESCAPE_SEQUENCES.sub("", text))


def spreadsheet_safe(text: str) -> str:
    """Return a text cell that no spreadsheet will run as a formula.

    A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
    prefixed with ``'``, as OWASP advises for CSV files; a number such as ``-1`` or
    ``+0.5`` is left as it is, as is any cell beginning otherwise (``HLA-A``).

    Parameters
    ----------
    text
        The cell.

    Returns
    -------
    str
        The cell, inert.

    Examples
    --------
    >>> spreadsheet_safe("=1+2"), spreadsheet_safe("-1"), spreadsheet_safe("HLA-A")
    ("'=1+2", '-1', 'HLA-A')
    """
    if text.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def undo_spreadsheet_guard(text: str) -> str:
    """Return a cell as it was before :func:`spreadsheet_safe`, for reading a CSV back.

    Parameters
    ----------
    text
        The cell as read.

    Returns
    -------
    str
        Without the ``'`` that :func:`spreadsheet_safe` put before a formula start.

    Examples
    --------
    >>> undo_spreadsheet_guard("'=1+2"), undo_spreadsheet_guard("'quoted'")
    ('=1+2', "'quoted'")
    """
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text
