"""Tools that annotate an :class:`~anndata.AnnData`, in the style of :mod:`scanpy.tl`."""

from ._annotate import annotate
from ._evaluate import evaluate

__all__ = ["annotate", "evaluate"]
