"""Annotate an ``.h5ad`` file without loading it, and never leave a half-written file behind.

Reading takes ``obs``, ``var`` (``raw/var`` when the markers were computed on raw data)
and ``uns[key]``; ``X``, layers and embeddings are never read. Writing copies the file
under a temporary name beside the target (a kernel-side copy), adds the new ``obs``
columns and the ``uns`` entry to the copy, and renames it over the target: on any
failure the target is as it was. Two processes that edit the same file take turns
through :func:`locked`, so neither loses the other's entries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from ._io import keep_mode, remove_stale_temporaries, temporary_beside
from ._keys import Default, Key
from .errors import CassiaError, FileBusy, MarkerError

try:  # anndata >= 0.11
    from anndata.io import read_elem, write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, write_elem

logger = logging.getLogger("cassia_sc")


@dataclass
class FileMarkers:
    """What annotating a file needs from it.

    Attributes
    ----------
    adata
        An AnnData without cells: the file's ``var`` (``raw/var`` when the markers were
        computed on raw data, other ``var`` columns joined in) and ``uns[key]``.
    groupby
        The ``obs`` column of the clusters.
    clusters
        That column: each cell's cluster, in file order.
    """

    adata: AnnData
    groupby: str
    clusters: pd.Series


def read_for_annotation(
    path: str | os.PathLike, *, key: str = Key.uns.markers, groupby: str | None = None
) -> FileMarkers:
    """Read the parts of an ``.h5ad`` file that annotation needs, and nothing else.

    Only ``uns[key]``, ``var`` (or ``raw/var``) and the one ``obs`` column of the clusters
    are read: not ``X``, not the other ``obs`` columns, not even the cell names.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    key
        Key of the :func:`scanpy.tl.rank_genes_groups` result in ``uns``.
    groupby
        The ``obs`` column of the clusters; by default the one ``uns[key]`` was computed for.

    Returns
    -------
    FileMarkers
        The markers, the grouping and each cell's cluster.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    CassiaError
        When it is not an AnnData ``.h5ad`` file.
    MarkerError
        When ``uns[key]`` or the ``groupby`` column is missing.

    Examples
    --------
    >>> from cassia_sc.h5ad import read_for_annotation
    >>> found = read_for_annotation("pbmc.h5ad")  # doctest: +SKIP
    >>> found.groupby, found.clusters.value_counts().head(3)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise CassiaError(f"{str(path)!r} is not an HDF5 (.h5ad) file: {err}.") from None
    with file:
        if "obs" not in file or "var" not in file:
            raise CassiaError(f"{str(path)!r} is not an AnnData .h5ad file (no obs or var).")
        if "uns" not in file or key not in file["uns"]:
            raise MarkerError(
                f"{path.name} has no uns[{key!r}]: run sc.tl.rank_genes_groups(adata, groupby) "
                "and save the file first, or pass the key that holds the result."
            )
        result = read_elem(file["uns"][key])
        params = result.get("params", {})
        groupby = groupby or (str(params["groupby"]) if "groupby" in params else None)
        columns = [str(c) for c in file["obs"].attrs.get("column-order", [])]
        if groupby is None or groupby not in columns:
            raise MarkerError(
                f"groupby={groupby!r} is not a column of adata.obs; it has {columns}."
            )
        clusters = pd.Series(read_elem(file["obs"][groupby]))
        var = read_elem(file["var"])
        if (
            np.asarray(params.get("use_raw", False)).any()
            and "raw" in file
            and "var" in file["raw"]
        ):
            raw_var = read_elem(file["raw"]["var"])
            extra = [c for c in var.columns if c not in raw_var.columns]
            var = raw_var.join(var[extra]) if extra else raw_var
    return FileMarkers(AnnData(var=var, uns={key: result}), groupby, clusters)


def read_embedding(path: str | os.PathLike, *, basis: str = Default.basis) -> np.ndarray | None:
    """Read ``obsm[f"X_{basis}"]`` of an ``.h5ad`` file, or None when it has none.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    basis
        The embedding, e.g. ``"umap"``.

    Returns
    -------
    numpy.ndarray or None
        Cells x dimensions.
    """
    with h5py.File(path, "r") as file:
        name = f"X_{basis}"
        if "obsm" not in file or name not in file["obsm"]:
            return None
        return np.asarray(read_elem(file["obsm"][name]))


def write_annotation(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    obs_columns: Mapping[str, Any],
    uns_key: str,
    uns_value: Mapping[str, Any],
) -> Path:
    """Write ``source`` plus new ``obs`` columns and one ``uns`` entry to ``target``, safely.

    ``target`` may be ``source`` (an in-place edit). The work is done on a copy beside
    ``target`` that replaces it only when complete, so a failure, a kill or a full disk
    leaves ``target`` as it was. ``target`` keeps its mode; a new one gets what the umask
    allows. When other processes may write ``target`` too, hold :func:`locked` around
    this call and whatever decided what to write.

    Parameters
    ----------
    source
        The ``.h5ad`` file to start from.
    target
        Where the annotated file goes.
    obs_columns
        New ``obs`` columns by name, each one value per cell in file order; existing
        columns of the same names are replaced, the others are left byte for byte.
    uns_key
        Key of the ``uns`` entry to add (or replace).
    uns_value
        The entry, in types anndata writes.

    Returns
    -------
    pathlib.Path
        ``target``.

    Examples
    --------
    >>> import pandas as pd
    >>> from cassia_sc.h5ad import write_annotation
    >>> labels = {"my_celltype": pd.Categorical(["T cell"] * 700)}  # one per cell
    >>> write_annotation("pbmc.h5ad", "pbmc.h5ad", obs_columns=labels,  # doctest: +SKIP
    ...     uns_key="my", uns_value={"note": "labelled by hand"})
    """
    source, target = Path(source), Path(target)
    if "/" in uns_key or any("/" in str(name) for name in obs_columns):
        raise ValueError("uns keys and obs column names must not contain '/'.")
    remove_stale_temporaries(target)
    handle, temporary = temporary_beside(target)  # mode as the umask allows
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)  # sendfile/copy_file_range: no Python-side copy
        with h5py.File(temporary, "r+") as file:
            _add_obs_columns(file["obs"], obs_columns)
            uns = file.require_group("uns")
            if uns_key in uns:
                del uns[uns_key]
            write_elem(uns, uns_key, dict(uns_value))
        keep_mode(temporary, target)  # an edit in place keeps the file's mode
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _add_obs_columns(obs: h5py.Group, columns: Mapping[str, Any]) -> None:
    n_cells = _n_rows(obs[obs.attrs["_index"]])
    if any(len(values) != n_cells for values in columns.values()):
        raise CassiaError("The new obs columns do not match the file's cells; nothing was written.")
    order = [str(c) for c in obs.attrs.get("column-order", [])]
    for name, values in columns.items():
        if name in obs:
            del obs[name]
        write_elem(obs, name, values)
        if name not in order:
            order.append(name)
    obs.attrs["column-order"] = order  # as anndata writes it: a list of str


def _n_rows(element: h5py.Dataset | h5py.Group) -> int:
    """Return the length of an array element, however anndata encoded it."""
    if isinstance(element, h5py.Dataset):
        return element.shape[0]
    for part in ("values", "codes"):  # nullable arrays, categoricals
        if part in element:
            return element[part].shape[0]
    raise CassiaError(f"Cannot tell the length of {element.name} in this file.")


@dataclass
class FileOutline:
    """The names in an ``.h5ad`` file's ``obs`` and ``uns``, without their content.

    Attributes
    ----------
    obs_columns
        The ``obs`` columns, in order.
    uns
        Each ``uns`` entry: None for an array, or the names it holds, two levels deep
        (a dict of name to None or to a dict of names to None).
    """

    obs_columns: list[str]
    uns: dict[str, Any]


def read_outline(path: str | os.PathLike) -> FileOutline:
    """Read the names of an ``.h5ad`` file's ``obs`` columns and ``uns`` entries; no data.

    Parameters
    ----------
    path
        The ``.h5ad`` file.

    Returns
    -------
    FileOutline
        The names, to tell what a write would replace.

    Examples
    --------
    >>> from cassia_sc.h5ad import read_outline
    >>> "rank_genes_groups" in read_outline("pbmc.h5ad").uns  # doctest: +SKIP
    True
    """
    with h5py.File(path, "r") as file:
        obs = file["obs"]
        columns = [str(c) for c in obs.attrs.get("column-order", [])]
        uns = _names(file["uns"], depth=3) if "uns" in file else {}
    return FileOutline(columns, uns)


def _names(element: h5py.Group | h5py.Dataset, *, depth: int) -> dict[str, Any] | None:
    if not isinstance(element, h5py.Group) or depth == 0:
        return None
    return {name: _names(element[name], depth=depth - 1) for name in element}


def lock_path(path: str | os.PathLike) -> Path:
    """Return the lock file of ``path``: ``.{name}.lock`` beside it.

    Parameters
    ----------
    path
        The file that is locked.

    Returns
    -------
    pathlib.Path
        The lock file, there only while a process holds or waits for the lock.
    """
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold the lock of ``path`` while editing it: one process at a time, on any machine.

    A read-modify-write of a file (read what it holds, decide, write it back) loses
    another process's write that lands in between; each side takes the lock around the
    whole of it. The lock is a file beside ``path`` (see :func:`lock_path`), locked with
    the operating system's file locks, so it is released when the process dies.

    Parameters
    ----------
    path
        The file to edit.
    wait
        Wait for another holder to finish (saying so in the log); False raises
        :class:`~cassia_sc.errors.FileBusy` at once instead.

    Yields
    ------
    None
        With the lock held.

    Raises
    ------
    FileBusy
        When ``wait=False`` and another process holds the lock.

    Examples
    --------
    >>> from cassia_sc.h5ad import locked, write_annotation
    >>> with locked("pbmc.h5ad"):  # doctest: +SKIP
    ...     write_annotation("pbmc.h5ad", "pbmc.h5ad", obs_columns={}, uns_key="x", uns_value={})
    """
    path = Path(path)
    beside = lock_path(path)
    lock = filelock.FileLock(beside)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise FileBusy(
                f"{path.name} is being written by another cassia-sc; run again once it has "
                "finished, or let this run wait for it."
            ) from None
        logger.warning("Waiting for another cassia-sc to finish writing %s ...", path.name)
        lock.acquire()
    try:
        yield
    finally:
        # Removed while still held, so no lock file stays beside the data: a process
        # waiting on this one finds it gone once it gets the lock, and locks a new one.
        with contextlib.suppress(OSError):
            beside.unlink()
        lock.release()
