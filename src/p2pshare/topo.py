"""
The historical topology formats, shared by the metadata server (which
writes them) and the C{p2p} command (which reads and prints them).

C{topo.txt} has one line per peer, in join order: C{NAME: NEIGHBOUR ...}
(C{s1: s2 s3}), the neighbours in the order the links were made, and
nothing at all when no peer is in.  C{NumberOfServers.txt} holds the
number of peers and a newline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence


class HasNeighbours(Protocol):
    name: str
    neighbours: list[str]


@dataclass
class TopoEntry:
    name: str
    neighbours: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 0


def topo_text(peers: Iterable[HasNeighbours]) -> str:
    return "".join(f"{p.name}:{''.join(' ' + n for n in p.neighbours)}\n" for p in peers)


def count_text(peers: Sequence[object]) -> str:
    return f"{len(peers)}\n"


def parse_topo(text: str) -> list[TopoEntry]:
    """
    Read C{topo.txt}; raise L{ValueError} naming the first bad line.
    """
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, rest = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"line {number} of topo.txt is not 'NAME: NEIGHBOUR ...'")
        entries.append(TopoEntry(name.strip(), rest.split()))
    return entries
