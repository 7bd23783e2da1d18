"""
When a download goes on after a failure, and when it gives up, above the
holders of one swarm (L{holders.judge} decides for each holder within it).

A download runs in rounds.  A round searches for the file's holders (the
first may be given them) and tries the versions they hold, the most
confirmed first; the next version at once only if none of the previous
one's holders is left to try.  After a round:

  - a fault of this machine (L{LocalFault}) ends the download: no holder
    can help with it;
  - a failure that is not the holders' (a name this peer does not keep, a
    target another process is writing, a name that means several files)
    ends it, saying so;
  - when every holder failed (L{wire.E_FAILED}), the file's holders are
    searched for again after the next of L{PAUSES}: one that left may be
    back, perhaps at another address, and the download resumes from its
    verified pieces.  Unless nobody is left worth trying: the ledger's
    allowance of new addresses is spent and none of them served, or every
    version found was refused as such (said too large to download);
  - a later search that finds nobody is one more round if the download
    has verified pieces of the file: its holders served, and may be on
    their way back (a holder restarting).  One that has nothing yet gives
    up at once, so that a folder whose holder has gone fails its files in
    a look each, not in every pause each.

After the last pause, the download gives up with what the last round
learnt.  The failures are the codes of L{wire}, so that what a code means
for retrying is said here, once.
"""

from __future__ import annotations

from collections.abc import Iterator

from p2pshare import wire
from p2pshare.peer.download.book import Ledger
from p2pshare.peer.download.keeping import FetchError
from p2pshare.wire import Match

PAUSES = (2.0, 5.0, 10.0, 20.0)  # seconds between a download's searches for its holders


class Rounds:
    """
    The rounds of one download, and what its failures mean for the next.
    """

    def __init__(self, name: str, ledger: Ledger, pauses: tuple[float, ...] | None = None) -> None:
        self.name = name
        self.ledger = ledger
        self.pauses = PAUSES if pauses is None else pauses

    def __iter__(self) -> Iterator[float | None]:
        """
        For each round, the pause after it if it fails (C{None} after the
        last).
        """
        yield from self.pauses
        yield None

    @staticmethod
    def holders_failed(error: FetchError) -> bool:
        """
        Whether C{error} says that the holders failed (another version, or
        another round, may do better) rather than something no holder
        changes.
        """
        return error.code == wire.E_FAILED

    def wait_for_holders(self, error: FetchError) -> bool:
        """
        Whether C{error}, from a later search, says that nobody holds the
        file now (or nobody among those that answered) while the download
        has pieces of it from holders that did: worth another round.
        """
        return error.code in (wire.E_NOT_FOUND, wire.E_INCOMPLETE) and bool(self.ledger.progressed)

    def failed(self, matches: list[Match], first: FetchError | None) -> tuple[FetchError, bool]:
        """
        After a round over C{matches} in which no version could be fetched
        (C{first}: the first failure, if any was raised): the error to
        tell, and whether searching again may help.
        """
        ledger = self.ledger
        found = {(m.sha256, m.size) for m in matches}
        refused = [ledger.refused[v] for v in found if v in ledger.refused]
        error = first
        if ledger.spent or error is None:
            error = FetchError(wire.E_FAILED, ledger.exhausted(self.name))
        if refused and len(refused) == len(found):
            return FetchError(wire.E_FAILED, refused[0]), False
        # Only if someone may yet be tried: an address that served, or a
        # new one while the allowance lasts.
        return error, not (ledger.spent and not ledger.good)
