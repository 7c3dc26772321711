"""Example data files shipped with cassia_sc; see README.md in this folder."""
