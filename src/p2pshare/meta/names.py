"""
Who owns a name.  A name belongs to whoever holds its token (the registry
keeps the token's SHA-256); the owner of a name that vanished without a
goodbye gets it held for a while (L{HeldNames}), so nobody else takes it
before the owner's restart comes back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterator, Mapping
from typing import NamedTuple

from p2pshare import wire
from p2pshare.wire import WireError


class Hold(NamedTuple):
    owner: str | None  # the owner's token hash
    until: float


class HeldNames(Mapping[str, Hold]):
    """
    Names of peers that vanished without a goodbye, each held for its
    owner until a time (three of its beats, which are clamped); at most
    C{most} of them, the one soonest to expire giving way.
    """

    def __init__(self, most: int) -> None:
        self.most = most
        self._held: dict[str, Hold] = {}

    def __getitem__(self, name: str) -> Hold:
        return self._held[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, name: str, owner: str | None, until: float) -> None:
        self._held[name] = Hold(owner, until)
        if len(self._held) > self.most:
            first = min(self._held, key=lambda n: self._held[n].until)
            del self._held[first]

    def release(self, name: str) -> None:
        self._held.pop(name, None)

    def expire(self, now: float) -> None:
        for name, held in list(self._held.items()):
            if now >= held.until:
                del self._held[name]

    def check_owner(
        self,
        name: str,
        token_hash: str | None,
        old_hash: str | None,
        registered: str | None,
        live: Container[str],
        unverified: Container[str],
    ) -> None:
        """
        Raise L{WireError} (C{name-taken}) unless the holder of C{token_hash}
        (or of C{old_hash}: a peer that replaced its token proves the old
        one once) may take C{name}: nobody claims it (it is not live, not
        unverified after a restart, not held), or the claim is its own.
        C{registered} is the token hash the registry has for the name.
        """
        held = self._held.get(name)
        owner = held.owner if held is not None else registered
        claimed = name in live or name in unverified or held is not None
        if not claimed or (owner is not None and owner in (token_hash, old_hash)):
            return
        if name in live:
            why = "is already live in this network"
        elif name in unverified:
            why = "belongs to a peer that has not come back since the restart yet"
        else:
            why = "belongs to a peer that vanished recently; it is held for its owner a while"
        raise WireError(wire.E_NAME_TAKEN, f"the name {name} {why}")


def token_hash(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None
