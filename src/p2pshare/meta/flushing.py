"""
L{Flushing}: what follows a change of the network, coalesced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from p2pshare.disk import atomic_write
from p2pshare.meta.registry import PeerRecord, Registry, both_ends, topology_files
from p2pshare.meta.tally import Tally
from p2pshare.topo import count_text, topo_text


class Flushing:
    """
    At most one flush per C{interval}, never later than that after a
    change (L{changed}): the registry's transaction is committed,
    C{topo.txt} and C{NumberOfServers.txt} are rewritten atomically when
    their text changed, and the log says what the network has become:
    C{topology settled} once for each new topology in which every peer is
    placed and the reported links form one tree (what operators and tests
    wait for, rather than polling C{topo.txt}), and C{network complete}
    once C{expect} peers are placed in one consistent tree (the peers are
    told too).

    @ivar version: bumped when the topology changes (L{topology_changed}).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry,
        tally: Tally,
        data_dir: Path | None,
        interval: float,
        expect: int,
        verified: Callable[[], list[PeerRecord]],
        tell_complete: Callable[[int], None],
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.tally = tally
        self.data_dir = data_dir
        self.interval = interval
        self.expect = expect
        self.complete = False
        self.version = 0
        self._verified = verified
        self._tell_complete = tell_complete
        self._settled_version = -1
        self._written: tuple[str, str] | None = None
        self._pending: IDelayedCall | None = None
        self._flushed_at = float("-inf")

    def topology_changed(self) -> None:
        self.version += 1

    def changed(self) -> None:
        """
        Something changed: flush now if the last flush is at least
        C{interval} old, else once it is (one pending at most).
        """
        if self._pending is not None:
            return
        wait = self._flushed_at + self.interval - self.clock.seconds()
        if wait <= 0:
            self.flush()
        else:
            self._pending = self.clock.callLater(wait, self.flush)

    def pending(self) -> float | None:
        """
        When the next flush is due, if one is.
        """
        return self._pending.getTime() if self._pending is not None else None

    def stop(self) -> None:
        """
        A pending flush is done now: the files and the registry as the
        network is.
        """
        if self._pending is not None:
            self._pending.cancel()
            self.flush()

    def flush(self) -> None:
        self._pending = None
        self._flushed_at = self.clock.seconds()
        self.registry.commit()
        self.write_files()
        if self.tally.settled() and self.version != self._settled_version:
            self._settled_version = self.version
            self.log.info("topology settled: {n} peers in one tree", n=len(self.tally.members))
        self._check_complete()

    def write_files(self) -> None:
        if self.data_dir is None:
            return
        peers = self._verified()
        texts = (topo_text(both_ends(peers)), count_text(peers))
        if texts == self._written:
            return
        for path, text in zip(topology_files(self.data_dir), texts, strict=True):
            atomic_write(path, text.encode("utf-8"))
        self._written = texts

    def _check_complete(self) -> None:
        if self.complete:
            return
        live = self.tally.placed_members()
        if live < self.expect or self.tally.one_sided:
            return
        self.complete = True
        self.log.info("network complete: {n} peers", n=live)
        self._tell_complete(live)
