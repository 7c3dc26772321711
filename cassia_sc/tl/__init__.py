"""Tools that annotate an :class:`~anndata.AnnData`, in the style of :mod:`scanpy.tl`."""

from ._annotate import annotate
from ._evaluate import evaluate
from ._import import import_cassia
from ._levels import levels
from ._refine import boost, score
from ._subclusters import transfer

__all__ = ["annotate", "boost", "evaluate", "import_cassia", "levels", "score", "transfer"]
