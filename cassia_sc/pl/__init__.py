"""Plots of cassia_sc annotations, in the style of :mod:`scanpy.pl`."""

from ._plots import annotations, evaluation, markers, review

__all__ = ["annotations", "evaluation", "markers", "review"]
