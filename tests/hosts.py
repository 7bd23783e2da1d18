"""
L{StaticFileHost}: the peer as its HTTP side sees it (L{IFileHost}), as
plain values, for tests that serve a share with no overlay behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from p2pshare.admission import Secret
from p2pshare.peer.interfaces import IFileHost
from p2pshare.peer.serving import UploadRate, UploadSlots
from p2pshare.peer.share import ShareIndex


@implementer(IFileHost)
@dataclass(eq=False)
class StaticFileHost:
    """
    A host that has what a peer with no downloads, no upload slots and no
    rate cap has: a share (or none) and a clock, in an open network, with
    no name yet, its uploads unrecorded.  A test gives it more, at the
    start or while it serves, as a peer would have: a secret, a name,
    slots, a rate cap, downloads in progress (C{partials}).

    @ivar address: what L{advertised} says.
    @ivar partials: the downloads in progress others may fetch from,
        found by their name and their SHA-256 (a L{Partial}, or anything
        with its fields).
    """

    clock: Any
    share: ShareIndex | None
    secret: Secret | None = None
    peer_name: str | None = None
    upload_slots: UploadSlots | None = None
    upload_rate: UploadRate | None = None
    address: str | None = None
    partials: list[Any] = field(default_factory=list)

    def advertised(self) -> str | None:
        return self.address

    def partial_named(self, name: str) -> Any:
        return next((p for p in self.partials if p.name == name), None)

    def partial_by_sha(self, sha: str) -> Any:
        return next((p for p in self.partials if p.sha256 == sha), None)

    def upload_began(
        self, name: str, host: str, total: int, sent: Callable[[], int], path: str = "direct"
    ) -> object:
        self.paths = [*getattr(self, "paths", []), path]
        return object()

    def upload_ended(self, key: object) -> None:
        pass
