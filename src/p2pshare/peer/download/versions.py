"""
Which holders a download believes: the versions that search results
describe (the one the most distinct addresses hold first), the holders
of a version grouped by piece root, and the piece list of a group,
fetched from one of its holders and checked against its root.  Search
results are input, and may be forged: every address asked goes through
the download's L{Ledger}.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from p2pshare.peer.download.agent import deliver, read_at_most
from p2pshare.peer.download.book import Address, Ledger
from p2pshare.peer.download.fetch import HEADER_TIMEOUT, no_answer, why_failed
from p2pshare.peer.reversal import RelayBusy, reversed_host
from p2pshare.pieces import DIGEST, check_list, piece_count, root_of
from p2pshare.wire import Match

Lists = dict[Address, tuple[bytes, int]]  # the piece lists fetched (and start pieces), by address
UrlMaker = Callable[[Match, str], Callable[[], bytes]]


def address_of(m: Match) -> Address:
    """
    Where C{m}'s holder serves, spelled one way, so that the spellings of
    one address are one: an IP address in its canonical form (an IPv4
    address however written, an IPv4-mapped IPv6 one as IPv4), a name in
    lower case.
    """
    if m.port == 0:  # nobody dials it: known by name (reversal.py)
        return reversed_host(m.holder), 0
    host = m.host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            host = socket.inet_ntoa(socket.inet_aton(host))  # 127.1, 0x7f000001: as connect reads them
        except OSError:
            pass
    else:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        host = str(mapped or ip)
    return host, m.port


def versions(matches: list[Match], ledger: Ledger) -> list[list[Match]]:
    """
    The versions (SHA-256 and size) that C{matches} describe, each with
    its matches in their order, the best first: the one that the most
    distinct addresses hold (a forger may give one address any number of
    names, and claim to be nearest), then the nearest.  Matches at an
    address this download may not try (it failed, or the budget of
    failures is spent and it never served), or with a piece root found
    bad, and versions it refused, are left out.
    """
    by: dict[tuple[str, int], list[Match]] = {}
    for m in matches:
        key = (m.sha256, m.size)
        if (key not in ledger.refused and ledger.may_try(address_of(m))
                and ledger.holds_maybe(address_of(m), m.sha256)
                and not (m.root and m.root in ledger.bad_roots)):
            by.setdefault(key, []).append(m)
    return sorted(
        by.values(), key=lambda ms: (-len({address_of(m) for m in ms}), min(m.hops for m in ms))
    )


class PieceLists:
    """
    Fetches the piece lists of groups of holders through C{agent}.
    """

    def __init__(self, agent: IAgent, clock: IReactorTime, url: UrlMaker) -> None:
        self.agent = agent
        self.clock = clock
        self.url = url

    async def fetch(
        self, group: list[Match], size: int, sha: str, root: str, problems: list[str],
        ledger: Ledger, claimed: dict[Address, set[str]], lists: Lists,
    ) -> tuple[bytes, int] | None:
        """
        The piece list of C{group}'s version, from the first of them that
        sends one matching C{root} (or has sent it already, in C{lists}),
        and the piece that holder suggests beginning with; None (and why,
        in C{problems}) if none.  At most three are asked, each only as
        the C{ledger} allows; one whose list is not one it claims failed.
        """
        for m in group:
            known = lists.get(address_of(m))
            if known is not None and (not root or root_of(known[0]) == root):
                return known
        asked = 0
        for m in group:
            where = address_of(m)
            if asked == 3 or where in lists or not ledger.holds_maybe(where, sha):
                continue  # enough asked; or its list is here; or it said it lacks this version
            if not ledger.begin(where):
                continue  # it failed, or no more untried addresses may be
            asked += 1
            url = self.url(m, f"/pieces/{sha}")()
            body = b""
            problem: str | None
            lacks = False  # it answered that it does not hold this version
            busy = False  # the relay to it is full: it may be tried again later
            try:
                # The head and the body, each within its overall deadline.
                response = await self.agent.request(b"GET", url).addTimeout(
                    HEADER_TIMEOUT, self.clock, no_answer
                )
                if response.code != 200:
                    deliver(response, Protocol())
                    problem = f"HTTP {response.code} for its piece list"
                    lacks = response.code in (404, 410)
                else:
                    body = await read_at_most(response, piece_count(size) * DIGEST).addTimeout(
                        HEADER_TIMEOUT, self.clock, no_answer
                    )
                    problem = check_list(body, size, None)
            except CancelledError:
                raise
            except Exception as e:
                problem = f"no piece list ({why_failed(e)})"
                busy = isinstance(e, RelayBusy)
            finally:
                ledger.done(where)
            if problem is None:
                got = root_of(body)
                ledger.lists[(where, sha)] = got
                lists[where] = body, start_piece(response.headers, piece_count(size))
                if not root or got == root:
                    return lists[where]
                if got in claimed.get(where, set()):
                    continue  # the list of another root it holds: its group will use it
                problem = "a piece list that does not match its root"
            problems.append(f"{m.holder}: {problem}")
            if lacks:
                ledger.lacked(where, sha, problem)  # it may hold another version
            elif not busy:
                ledger.fail(where, problem)
        return None



def start_piece(headers: Headers, count: int) -> int:
    """
    The holder's C{P2P-Start-Piece} suggestion, if it is one (else 0).
    """
    value = (headers.getRawHeaders(b"p2p-start-piece") or [b"0"])[0]
    if not value.isdigit() or len(value) > 9 or int(value) >= count:
        return 0
    return int(value)


def groups(holders: list[Match]) -> list[tuple[str, list[Match]]]:
    """
    The holders by piece root, the largest group first (then the nearest);
    in a group, one holder per address (many names at one address are one
    source).
    """
    by_root: dict[str, list[Match]] = {}
    for m in holders:
        by_root.setdefault(m.root, []).append(m)
    for root, group in by_root.items():
        # Whole holders first (nearest first), then partial ones, fullest first.
        group.sort(key=lambda m: (m.have is not None, -(m.have or 0), m.hops))
        unique: dict[Address, Match] = {}
        for m in group:
            unique.setdefault(address_of(m), m)
        by_root[root] = list(unique.values())
    return sorted(
        by_root.items(),
        key=lambda kv: (-sum(m.have is None for m in kv[1]), -len(kv[1]), kv[1][0].hops),
    )


def may_serve(
    m: Match, sha: str, root: str, ledger: Ledger, claimed: dict[Address, set[str]],
    lists: Lists, strict: bool = False,
) -> bool:
    """
    May C{m} serve the pieces of C{root}?  Not if its address failed, or
    the piece list it sent is another root's; C{strict}ly, also not if it
    claims several roots for this version and has not said which it holds.
    """
    where = address_of(m)
    if not ledger.usable(where):
        return False
    known = ledger.lists.get((where, sha))
    if known is not None:
        return not root or known == root
    return not (strict and len(claimed.get(where, ())) > 1)
