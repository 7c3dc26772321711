"""Plots of cassia_sc annotations, in the style of :mod:`scanpy.pl`."""
