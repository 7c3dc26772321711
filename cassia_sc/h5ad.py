"""Annotate an ``.h5ad`` file without loading it, and never leave a half-written file behind.

Reading takes ``obs``, ``var`` (``raw/var`` when the markers were computed on raw data)
and ``uns[key]``; ``X``, layers and embeddings are never read. Writing copies the file
under a temporary name beside the target (a kernel-side copy), adds the new ``obs``
columns and the ``uns`` entry to the copy, and renames it over the target: on any
failure the target is as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from ._keys import Default, Key
from .errors import CassiaError, MarkerError

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
    leaves ``target`` as it was.

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
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        shutil.copyfile(source, temporary)  # sendfile/copy_file_range: no Python-side copy
        shutil.copymode(source, temporary)
        with h5py.File(temporary, "r+") as file:
            _add_obs_columns(file["obs"], obs_columns)
            uns = file.require_group("uns")
            if uns_key in uns:
                del uns[uns_key]
            write_elem(uns, uns_key, dict(uns_value))
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
