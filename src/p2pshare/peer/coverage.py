"""
What a search covered: how many peers answered, of how many the network
has, and which did not (and why), as the search engine reports it and as
C{p2p} says it to a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pshare.wire import Match

_REASONS = {
    "silent": "",
    "lost": "its link was lost",
    "refused": "it refused: over its search allowance",
}


@dataclass(frozen=True)
class Coverage:
    """
    Who a search reached.

    @ivar answered: the peers that answered, this one included.
    @ivar total: the peers the metadata server has (placed or not), or
        L{None} when it could not be asked.
    @ivar missed: peers that did not answer, with why (C{silent}, C{lost},
        C{refused}), nearest first; their subtrees did not answer either.
    @ivar unnamed: peers known to be missing beyond those named.
    """

    answered: int
    total: int | None
    missed: tuple[tuple[str, str], ...] = ()
    unnamed: int = 0

    @property
    def complete(self) -> bool:
        """
        Every peer answered: nothing found is a definitive "not found".
        More answers than the network has peers is not that: a member
        misstated its subtree, or a peer lost its registration.
        """
        return (
            not self.missed and not self.unnamed
            and self.total is not None and self.answered == self.total
        )

    @property
    def missing(self) -> bool:
        """
        Is part of the network known not to have answered (so that asking
        again, or waiting for a repair, may help)?
        """
        return bool(self.missed or self.unnamed) or (
            self.total is not None and self.answered != self.total
        )

    def sentence(self) -> str:
        """
        What the search covered, for a person: C{searched 187 of 200 peers;
        no answer from s4 (and the 12 peers below it)}.
        """
        if self.total is None:
            head = f"searched {_peers(self.answered)} (the network's size is not known now)"
        else:
            head = f"searched {self.answered:,} of {_peers(self.total)}"
        missing = max(0, (self.total or 0) - self.answered)
        if self.missed:
            who = ", ".join(
                name + (f" ({_REASONS[why]})" if _REASONS.get(why) else "")
                for name, why in self.missed
            )
            below = missing - len(self.missed)
            if below > 0:
                them = "it" if len(self.missed) == 1 else "them"
                who += f" (and the {'peer' if below == 1 else _peers(below)} below {them})"
            return f"{head}; no answer from {who}"
        if self.total is not None and self.answered > self.total:
            return (f"{head}: more than the metadata server knows of (a peer misstated its "
                    "part, or lost its registration), so not taken as every peer")
        if missing or self.unnamed:
            n = max(missing, self.unnamed)
            verb = "is" if n == 1 else "are"
            return f"{head}; {_peers(n)} {verb} not in the tree now (joining, or re-attaching after a repair)"
        return head

    def as_dict(self) -> dict[str, Any]:
        return {
            "answered": self.answered, "total": self.total, "complete": self.complete,
            "missed": [{"name": n, "reason": why} for n, why in self.missed],
            "unnamed": self.unnamed, "text": self.sentence(),
        }


def _peers(n: int) -> str:
    return "1 peer" if n == 1 else f"{n:,} peers"


@dataclass(frozen=True)
class Found:
    """
    What a search found, and what it covered.
    """

    matches: list[Match]
    coverage: Coverage
    full: bool = False  # it found as many as one search keeps: some may be left out
