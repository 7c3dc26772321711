"""Plots of cassia_sc annotations, in the style of :mod:`scanpy.pl`."""

from ._levels import level_colours as level_colours  # tables, not plots: outside __all__
from ._levels import level_counts as level_counts
from ._levels import level_tree, levels
from ._plots import annotations, evaluation, markers, review

__all__ = ["annotations", "evaluation", "level_tree", "levels", "markers", "review"]
