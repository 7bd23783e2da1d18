"""
What one download knows, as pure state: which pieces are verified and
which are being fetched from whom (L{PieceBook}), and what it learned of
the holder addresses it was given (L{Ledger}).  No I/O, no clock: the
swarm gives the time where it matters.

What one download learns of the addresses it is given is its L{Ledger}:
an address that has not yet sent a verified piece is dropped at its
first failure and never tried again in that download, and at most
L{BAD_ADDRESSES} such addresses are ever tried, so a forged search result
cannot turn a download into a flood of connections to somebody else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from p2pshare.pieces import piece_count, piece_size, piece_span

BAD_ADDRESSES = 8  # addresses one download tries that turn out not to hold the file, at most

Address = tuple[str, int]  # where a holder serves: (host, port)


VERSIONS_PER_ADDRESS = 2  # versions one address may say it lacks before it failed


class Ledger:
    """
    What one download has learned of the holder addresses it was given,
    across every search, piece list and swarm of it: which failed (they
    never sent a verified piece, and are never tried again), which sent
    verified pieces (good), and which are on trial now.  An address not
    yet tried is tried only while the failed ones and those on trial are
    fewer than C{budget}, so at most C{budget} addresses that do not hold
    the file are ever connected to, however many a search result names.
    Also the piece roots and versions found bad, and what each address
    answered for its piece list.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = BAD_ADDRESSES if budget is None else budget
        self.failed: dict[Address, str] = {}  # address -> why
        # Versions an address said it does not hold (a match may name a
        # real holder with another's content): it stays usable for others,
        # until it has said so VERSIONS_PER_ADDRESS times.  It counts
        # against the budget from the first.
        self.lacks: dict[Address, set[str]] = {}
        self._refusals: Counter[Address] = Counter()
        self.good: set[Address] = set()
        self.bad_roots: set[str] = set()
        self.refused: dict[tuple[str, int], str] = {}  # (sha256, size) -> why it is not fetched
        self.lists: dict[tuple[Address, str], str] = {}  # (address, sha256) -> root of its piece list
        self.progressed: set[str] = set()  # versions (sha256) of which a piece verified
        self._using: Counter[Address] = Counter()  # begun and not done, by how many

    def usable(self, address: Address) -> bool:
        return address not in self.failed

    def _counted(self) -> int:
        """
        Addresses that turned out not to hold the file (or a version of it).
        """
        return len(self.failed.keys() | self.lacks.keys())

    def holds_maybe(self, address: Address, sha256: str) -> bool:
        """
        May C{address} still hold version C{sha256} (as far as this
        download knows)?
        """
        return address not in self.failed and sha256 not in self.lacks.get(address, ())

    def lacked(self, address: Address, sha256: str, why: str) -> None:
        """
        C{address} answered that it does not hold version C{sha256}: it
        may still hold another, unless it has said so of
        L{VERSIONS_PER_ADDRESS} already (then it failed).
        """
        self.lacks.setdefault(address, set()).add(sha256)
        self._refusals[address] += 1
        if self._refusals[address] >= VERSIONS_PER_ADDRESS:
            self.fail(address, why)

    def _on_trial(self) -> int:
        return sum(1 for a in self._using if a not in self.good and a not in self.lacks)

    def may_try(self, address: Address) -> bool:
        """
        May C{address} be connected to now?
        """
        if address in self.failed:
            return False
        return (address in self.good or address in self._using or address in self.lacks
                or self._counted() + self._on_trial() < self.budget)

    def begin(self, address: Address) -> bool:
        """
        If C{address} may be connected to now (L{may_try}), it is in use
        (on trial, unless good) until L{done}.
        """
        if not self.may_try(address):
            return False
        self._using[address] += 1
        return True

    def done(self, address: Address) -> None:
        """
        A use of C{address} begun by L{begin} has ended.
        """
        self._using[address] -= 1
        if self._using[address] <= 0:
            del self._using[address]

    def held(self, address: Address) -> None:
        """
        C{address} sent a piece that verified.
        """
        if address not in self.failed:
            self.good.add(address)

    def fail(self, address: Address, why: str) -> None:
        """
        C{address} turned out not to hold the file (or to send bad data).
        """
        self.good.discard(address)
        self.failed.setdefault(address, why)

    @property
    def spent(self) -> bool:
        return self._counted() >= self.budget

    def exhausted(self, name: str) -> str:
        """
        The sentence for a download left with no holder to try.
        """
        n = self._counted()
        if not n:
            return f"could not download {name}: no holder is left to try"
        most = " (the most one download tries)" if self.spent else ""
        return (
            f"could not download {name}: {n} address{'' if n == 1 else 'es'} said to hold it "
            f"failed{most}, and no other holder is left"
        )


class PieceBook:
    """
    Which pieces of a file are verified, and which are being fetched from
    whom.  Pure state: no I/O.
    """

    def __init__(self, size: int, verified: Iterable[int] = (), first: int = 0) -> None:
        """
        @param first: the piece to begin with; pieces are claimed from
            there on, round to it again.  Peers that fetch one file at once
            begin at different pieces, so that they hold different pieces
            and can trade them.
        """
        self.size = size
        self.count = piece_count(size)
        self.piece = piece_size(size)
        self.verified: set[int] = set(verified)
        self.fetching: dict[int, set[str]] = {}
        self.since: dict[int, float] = {}  # when each piece being fetched was first claimed
        self._verified_bytes = sum(self._length(i) for i in self.verified)
        self.first = first % self.count
        self._next = 0  # no unclaimed missing piece lies before this position

    @property
    def done(self) -> bool:
        return len(self.verified) == self.count

    def verified_bytes(self) -> int:
        return self._verified_bytes

    def _length(self, i: int) -> int:
        start, stop = piece_span(i, self.size)
        return stop - start

    def _at(self, position: int) -> int:
        return (self.first + position) % self.count

    def _open(self, i: int) -> bool:
        return i not in self.verified and i not in self.fetching

    def take(
        self, holder: str, most: int, now: float = 0.0, patience: float = 0.0,
        has: set[int] | None = None,
    ) -> list[int]:
        """
        Claim for C{holder} a run of up to C{most} consecutive pieces nobody
        fetches (among C{has}, the pieces a partial holder has); failing
        that (the endgame), one piece that exactly one other holder has
        been fetching for at least C{patience} seconds.  Empty if there is
        nothing for it now.
        """
        while self._next < self.count and not self._open(self._at(self._next)):
            self._next += 1
        run: list[int] = []
        p = self._next
        if has is not None:
            while p < self.count and not (self._at(p) in has and self._open(self._at(p))):
                p += 1
        while p < self.count and len(run) < most:
            i = self._at(p)
            if not self._open(i) or (has is not None and i not in has):
                break
            if run and i != run[-1] + 1:
                break  # round past the last piece: a run is consecutive bytes
            run.append(i)
            p += 1
        if not run:
            for i, holders in sorted(self.fetching.items()):
                if (len(holders) == 1 and holder not in holders and i not in self.verified
                        and (has is None or i in has) and now - self.since[i] >= patience):
                    run = [i]
                    break
        for i in run:
            self.fetching.setdefault(i, set()).add(holder)
            self.since.setdefault(i, now)
        return run

    def got(self, index: int) -> bool:
        """
        Piece C{index} is verified and written; False if it already was
        (another holder's copy won the endgame).
        """
        self.fetching.pop(index, None)
        self.since.pop(index, None)
        if index in self.verified:
            return False
        self.verified.add(index)
        self._verified_bytes += self._length(index)
        return True

    def give_back(self, indices: Iterable[int], holder: str) -> None:
        """
        C{holder} will not deliver these pieces after all.
        """
        for i in indices:
            holders = self.fetching.get(i)
            if holders is None:
                continue
            holders.discard(holder)
            if not holders:
                del self.fetching[i]
                self.since.pop(i, None)
                self._next = min(self._next, (i - self.first) % self.count)

    def fetched_by_others(self, indices: Iterable[int]) -> bool:
        """
        Is every one of these pieces verified already?
        """
        return all(i in self.verified for i in indices)
