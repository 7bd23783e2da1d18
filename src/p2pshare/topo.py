"""
The historical topology formats, shared by the metadata server (which
writes them) and the C{p2p} command (which reads and prints them).

C{topo.txt} has one line per peer, in join order: C{NAME: NEIGHBOUR ...}
(C{s1: s2 s3}), the neighbours in the order the links were made, and
nothing at all when no peer is in.  C{NumberOfServers.txt} holds the
number of peers and a newline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


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


def tree_text(peers: Sequence[HasNeighbours]) -> str:
    """
    The topology drawn as an indented tree from the first peer (the root);
    peers it does not reach are listed after it.
    """
    views = {p.name: p.neighbours for p in peers}
    seen: set[str] = set()
    lines: list[str] = []

    def draw(name: str, prefix: str, last: bool, top: bool) -> None:
        seen.add(name)
        if top:
            lines.append(name)
            inner = ""
        else:
            lines.append(prefix + ("└── " if last else "├── ") + name)
            inner = prefix + ("    " if last else "│   ")
        children = [n for n in views[name] if n not in seen and n in views]
        for i, child in enumerate(children):
            if child not in seen:  # a cycle in a broken topology ends here
                draw(child, inner, i == len(children) - 1, False)

    for p in peers:
        if p.name not in seen:
            draw(p.name, "", True, True)
    return "".join(line + "\n" for line in lines)


def walk(start: str, neighbours: Callable[[str], Iterable[str]]) -> dict[str, int]:
    """
    Breadth-first from C{start}: the hops to every peer it reaches, where
    C{neighbours(name)} are the peers one hop from C{name}.  The one walk
    over the tree that the metadata server, the tools and the tests share.
    """
    dist = {start: 0}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for n in neighbours(name):
                if n not in dist:
                    dist[n] = dist[name] + 1
                    following.append(n)
        frontier = following
    return dist


def distances(views: Mapping[str, Sequence[str]], start: str) -> dict[str, int]:
    """
    Hops from C{start} to every peer it reaches in C{views}.
    """
    return walk(start, lambda name: views.get(name, ()))


def far_apart(views: Mapping[str, Sequence[str]]) -> tuple[str, str, int]:
    """
    Two peers as far apart as any in the tree, and their distance.
    """
    def farthest(start: str) -> tuple[str, int]:
        dist = distances(views, start)
        name = max(sorted(dist), key=lambda n: dist[n])
        return name, dist[name]

    a, _ = farthest(next(iter(views)))
    b, hops = farthest(a)
    return a, b, hops
