"""Plots of cassia_sc annotations, in the style of :mod:`scanpy.pl`."""

from ._plots import annotations, markers, review

__all__ = ["annotations", "markers", "review"]
