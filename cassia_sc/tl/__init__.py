"""Tools that annotate an :class:`~anndata.AnnData`, in the style of :mod:`scanpy.tl`."""
