"""
How a run of pieces from a holder can end, besides success: what both
fetchers raise (peer/download/fetch.py) and what the one retry policy
judges (peer/download/holders.py).
"""

from __future__ import annotations


class Corrupt(Exception):
    """
    A piece did not verify: it came from exactly this holder.
    """

    def __init__(self, index: int) -> None:
        super().__init__(f"piece {index}")
        self.index = index


class Busy(Exception):
    """
    The holder answered 503: it may serve later, after C{retry_after} s.
    """

    def __init__(self, retry_after: float, why: str = "") -> None:
        super().__init__(why or f"busy; retry after {retry_after:.0f} s")
        self.retry_after = retry_after
        self.why = why  # what the user is told (a relay at its cap), if anything


class NotYet(Exception):
    """
    A partial holder has not (or no longer) the pieces asked for.
    """


class Gone(Exception):
    """
    The holder no longer holds this version of the file.
    """


class Broke(Exception):
    """
    The holder broke off, stalled or answered nonsense; it may do better
    later.
    """
