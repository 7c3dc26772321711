"""Exception types raised by cassia_sc, each with a message that says what to do."""

from __future__ import annotations


class CassiaError(Exception):
    """Base class of every error cassia_sc raises on purpose."""


class MarkerError(CassiaError, ValueError):
    """Marker input that cannot be read, or that holds nothing to annotate."""
