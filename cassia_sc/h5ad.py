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
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from .errors import CassiaError, MarkerError

try:  # anndata >= 0.11
    from anndata.io import read_elem, write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, write_elem

logger = logging.getLogger("cassia_sc")


def read_for_annotation(path: str | os.PathLike, *, key: str = "rank_genes_groups") -> AnnData:
    """Read the parts of an ``.h5ad`` file that annotation needs, and nothing else.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    key
        Key of the :func:`scanpy.tl.rank_genes_groups` result in ``uns``.

    Returns
    -------
    AnnData
        Without ``X``: the file's ``obs``, its ``var`` (or ``raw/var`` when the result was
        computed on raw data, with any other ``var`` columns joined in) and ``uns[key]``.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    CassiaError
        When it is not an AnnData ``.h5ad`` file.
    MarkerError
        When ``uns[key]`` is missing.
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
        obs = read_elem(file["obs"])
        var = read_elem(file["var"])
        result = read_elem(file["uns"][key])
        use_raw = np.asarray(result.get("params", {}).get("use_raw", False)).any()
        if use_raw and "raw" in file and "var" in file["raw"]:
            raw_var = read_elem(file["raw"]["var"])
            extra = [c for c in var.columns if c not in raw_var.columns]
            var = raw_var.join(var[extra]) if extra else raw_var
    return AnnData(obs=obs, var=var, uns={key: result})


def write_annotation(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    obs_columns: pd.DataFrame,
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
        New ``obs`` columns, indexed like the file's ``obs``; existing columns of the
        same names are replaced, the others are left byte for byte as they were.
    uns_key
        Key of the ``uns`` entry to add (or replace).
    uns_value
        The entry, in types anndata writes.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    source, target = Path(source), Path(target)
    if "/" in uns_key or any("/" in str(c) for c in obs_columns.columns):
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


def _add_obs_columns(obs: h5py.Group, columns: pd.DataFrame) -> None:
    index = read_elem(obs[obs.attrs["_index"]])
    if len(index) != len(columns) or not np.array_equal(
        np.asarray(index, dtype=str), columns.index.astype(str)
    ):
        raise CassiaError("The new obs columns do not match the file's cells; nothing was written.")
    order = [str(c) for c in obs.attrs.get("column-order", [])]
    for name, column in columns.items():
        if name in obs:
            del obs[name]
        write_elem(
            obs,
            str(name),
            column.array if isinstance(column.dtype, pd.CategoricalDtype) else column.to_numpy(),
        )
        if name not in order:
            order.append(str(name))
    obs.attrs["column-order"] = order  # as anndata writes it: a list of str
