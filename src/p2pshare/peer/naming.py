"""
What C{p2p get NAME} means, decided from what the network holds.

A NAME is first an exact path (any characters a shared name may hold,
C{[ ] ? *} included).  When no file has that path, a bare name that ends
exactly one path in the network (C{set.ogg} for C{Music/Live Set/set.ogg})
is that file, and a name that is a folder in the network (C{Music}, or
C{Music/} said outright) is every file under it.  Several paths, or
several versions (contents) of one path, are refused with the list and
how to choose: the full path, C{sha256:HEX}, or C{--from HOLDER}.  Every
holder of the chosen content counts, whatever path it holds it under.

These are pure functions of the matches that searches found;
L{p2pshare.peer.files.PeerFiles} runs the searches.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pshare import wire
from p2pshare.peer.download.transfer import FetchError
from p2pshare.peer.share import glob_escape
from p2pshare.wire import Match

LISTED = 8  # choices named in a refusal; the rest are counted


@dataclass(frozen=True)
class Wanted:
    """
    What a get names: one file (C{name}, its path in the network, and its
    holders, the chosen version's) or a folder (C{name}, its path, and
    every match of every file under it).
    """

    name: str
    matches: list[Match]
    folder: bool = False


def folder_pattern(folder: str) -> str:
    """
    The glob that finds every file under C{folder}, whatever its name holds.
    """
    return glob_escape(folder.strip("/")) + "/*"


def below_pattern(name: str) -> str:
    """
    The glob that finds every file whose path ends in the segments C{name}.
    """
    return "*/" + glob_escape(name)


def same_content(sha256: str) -> str:
    """
    The search for every holder of this content, whatever its path.
    """
    return f"sha256:{sha256}"


def same_case(name: str, matches: list[Match]) -> list[Match]:
    """
    The matches of exactly C{name}, letter case included, when there are
    any (a search ignores case: C{a.txt} and C{A.txt} are two files).
    """
    exact = [m for m in matches if m.name == name]
    return exact or matches


def one_version(name: str, matches: list[Match]) -> list[Match]:
    """
    C{matches} of one path (or one content), if they are all one version;
    refused with the versions and how to choose otherwise.
    """
    versions: dict[tuple[str, int], list[str]] = {}
    for m in matches:
        holders = versions.setdefault((m.sha256, m.size), [])
        if m.holder not in holders:
            holders.append(m.holder)
    if len(versions) <= 1:
        return matches
    shown = [
        f"sha256:{sha[:12]} ({size} bytes, held by {', '.join(h[:16] for h in holders[:3])}"
        f"{' and more' if len(holders) > 3 else ''})"
        for (sha, size), holders in list(versions.items())[:LISTED]
    ]
    raise FetchError(
        wire.E_AMBIGUOUS,
        f"{_short(name)} is {len(versions)} different files in the network: {'; '.join(shown)}"
        f"{_more(len(versions))}; choose one with p2p get sha256:HEX, or --from HOLDER",
    )


def choose(name: str, inside: list[Match], below: list[Match]) -> Wanted | None:
    """
    What a C{name} that is no file's whole path means: the one file whose
    path ends in it, or the folder of that name; None when it is neither.
    """
    paths = sorted({m.name for m in below})
    if not paths:
        if not inside:
            return None
        # The folder as typed, letter case included, when it is there.
        depth = name.strip("/").count("/") + 1
        exact = [m for m in inside if "/".join(m.name.split("/")[:depth]) == name.strip("/")]
        inside = exact or inside
        return Wanted(_folder_name(name, inside), inside, folder=True)
    if len(paths) == 1 and not inside:
        return Wanted(paths[0], one_version(paths[0], below))
    choices = [_short(p) for p in paths[:LISTED]]
    if inside:
        choices.insert(0, f"the folder {_short(_folder_name(name, inside))}/")
    count = len(paths) + (1 if inside else 0)
    raise FetchError(
        wire.E_AMBIGUOUS,
        f"{_short(name)} names {count} things in the network: {', '.join(choices)}{_more(count)}; "
        "give the full path (a folder ends in /)",
    )


def _folder_name(name: str, inside: list[Match]) -> str:
    """
    The folder as its holders spell it (the search ignored letter case).
    """
    depth = name.strip("/").count("/") + 1
    return "/".join(inside[0].name.split("/")[:depth])


def _short(path: str, room: int = 120) -> str:
    """
    A path in a refusal, cut in its middle when long (the refusal must
    fit in one line of the control channel however long the names).
    """
    if len(path) <= room:
        return path
    return path[: room // 2 - 1] + "\u2026" + path[-(room // 2):]


def _more(count: int) -> str:
    return f" (and {count - LISTED} more)" if count > LISTED else ""
