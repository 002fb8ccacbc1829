"""The error of a posted form that is refused, with the HTTP status to answer it with."""

from __future__ import annotations


class FormError(ValueError):
    """400 for an unreadable form, 413 for one too large or of too many parts, 415 for a kind not taken."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
