"""
How the parts of a peer meet: each part depends on one of these
interfaces, never on another part's module, so that C{peer/} has no import
circle and each part can be tested against a fake.

    node.py (PeerNode) ---- provides IOverlay, ISearchHost; assembles the rest
    links.py, joining.py -- plain objects the node hands its callables to
    files.py (PeerFiles) -- provides IFileHost
    protocol.py ----------- PeerProtocol provides ILink; uses IOverlay
    search.py ------------- SearchEngine provides ISearch; uses ISearchHost, ILink
    http.py, serving.py --- use IFileHost
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from p2pshare.peer.coverage import Found
    from p2pshare.peer.download.attempt import Partial
    from p2pshare.wire import Match, Message, RemoteError


class ILink(Interface):
    """
    One connection to another peer (an overlay link once C{link} is set),
    as the search engine and the node use it.
    """

    link = Attribute("the other peer's name once this is an overlay link, else None")
    connected = Attribute("whether the connection is open")
    search_allowance = Attribute("a TokenBucket for the searches the other peer starts")
    forward_allowance = Attribute("a TokenBucket for the searches it passes on")
    searches_refused = Attribute("how many of its searches were over its allowance")

    def send(verb: str, *args: object, text: str | None = None, **options: object) -> None:
        """
        Send one message.
        """

    def sendMessage(msg: Message) -> None:
        """
        Send one parsed message.
        """

    def misbehaved(why: str) -> None:
        """
        Close this connection and cool its host off.
        """


class ISearch(Interface):
    """
    The searches passing through one peer.
    """

    def start(
        pattern: str, timeout: float = ..., search_id: str | None = None, exact: int = 0,
        enough: Callable[[list[Match]], bool] | None = None,
    ) -> Deferred[Found]:
        """
        Search the whole network; a Deferred that fires with a Found: every
        match, and what the search covered.
        """

    def received(proto: ILink, msg: Message) -> None:
        """
        A neighbour asks us to search our side of the tree.
        """

    def results(proto: ILink, msg: Message) -> None:
        """
        A neighbour answers a search we forwarded.
        """

    def working(proto: ILink, msg: Message) -> None:
        """
        A neighbour is still collecting answers to a search we forwarded.
        """

    def link_lost(name: str) -> None:
        """
        A link went away: searches waiting on it stop waiting.
        """

    def stop() -> None:
        """
        End every pending search now.
        """


class ISearchHost(Interface):
    """
    The peer as its search engine sees it.
    """

    clock = Attribute("an IReactorTime")
    neighbours = Attribute("the overlay links, by name: objects with .name and .proto (ILink)")
    registration_seq = Attribute(
        "the number the metadata server gave this peer's registration, or None"
    )

    def network_size() -> Deferred[tuple[int | None, int | None]]:
        """
        A Deferred that fires with C{(peers, last)}: how many peers the
        metadata server has, placed or not, and the number of its latest
        registration; the last known (or C{(None, None)}) when it cannot
        be asked now.  It never fails.
        """

    def local_matches(pattern: str, hops: int, exact: int = 0) -> list[Match]:
        """
        This peer's own files matching C{pattern} (C{exact}: as
        L{p2pshare.peer.share.matches} reads it), as Matches.
        """

    def vouch(matches: list[Match]) -> Deferred[list[Match]]:
        """
        A Deferred that fires with those of C{matches} whose holder is a
        live peer at the address the match gives (as the metadata server
        knows it), or with all of them when that cannot be asked.
        """


class IOverlay(Interface):
    """
    The peer as its line protocols (overlay links, the link to the
    metadata server) see it: they parse, it decides.
    """

    clock = Attribute("an IReactorTime")
    secret = Attribute("the network's Secret, or None in an open network")
    peer_name = Attribute("this peer's name, once known")
    messages = Attribute("a Counter of the overlay messages sent, by verb")
    search = Attribute("the ISearch of this peer")
    reversals = Attribute("the Reversals of this peer: PUSH passed on or answered")

    # A proto below is a PeerProtocol (a MetaClientProtocol for the meta_
    # ones): Any, since naming it would import protocol.py, which imports
    # this module (tests/test_imports.py counts TYPE_CHECKING imports too).

    def hello(proto: Any, msg: Message) -> None:
        """
        A newcomer asks to join through us.
        """

    def free_said(name: str, hops: int | None) -> None:
        """
        A neighbour says how far the nearest free slot behind it is.
        """

    def up_said(name: str, fields: tuple[str, ...]) -> None:
        """
        Our parent says where it hangs from.
        """

    def goodbye_said(name: str, proto: Any) -> None:
        """
        A neighbour says it leaves the network (its link closes next).
        """

    def link_lost(name: str, proto: Any) -> None:
        """
        An overlay link closed.
        """

    def verify(proto: Any, msg: Message) -> None:
        """
        The metadata server dials back to check where we listen.
        """

    def meta_ticket(value: str) -> None:
        """
        The metadata server's word on us (a ticket field).
        """

    def registration() -> dict[str, Any]:
        """
        The options of our registration line.
        """

    def meta_welcomed(proto: Any, msg: Message) -> None:
        """
        The metadata server registered us.
        """

    def meta_refused(error: RemoteError) -> None:
        """
        The metadata server refused our registration.
        """

    def meta_says_rejoin() -> None:
        """
        The metadata server says another peer is the root.
        """

    def meta_said_complete(peers: int) -> None:
        """
        The network reached its expected size.
        """

    def meta_lost(proto: Any) -> None:
        """
        The link to the metadata server closed.
        """


class IFileHost(Interface):
    """
    The peer as its HTTP side sees it: what it shares, the downloads in
    progress others may fetch from, and what bounds and records its
    uploads.  A host provides all of it; where a thing is absent (no
    share, no cap) the attribute says so with None.
    """

    clock = Attribute("an IReactorTime")
    secret = Attribute("the network's Secret, or None in an open network")
    share = Attribute("the ShareIndex of the shared folder, or None when nothing is shared")
    peer_name = Attribute("this peer's name, or None until it is known")
    upload_slots = Attribute(
        "the UploadSlots that bound the files served at once, or None where nothing bounds them"
    )
    upload_rate = Attribute("the UploadRate that caps all uploads together, or None: no cap")

    def advertised() -> str | None:
        """
        The host others reach this peer at, as the network knows it (a
        signed URL names it).
        """

    def partial_named(name: str) -> Partial | None:
        """
        The download in progress that becomes the shared file C{name}, or
        None: its verified pieces are served under that name.
        """

    def partial_by_sha(sha: str) -> Partial | None:
        """
        The download in progress of the content with SHA-256 C{sha}, or
        None: its piece list and the pieces it has are served.
        """

    def upload_began(
        name: str, host: str, total: int, sent: Callable[[], int], path: str = "direct"
    ) -> object:
        """
        A response of C{name} to C{host} began, C{total} bytes long, over a
        connection C{path} says (C{direct}, or C{reversed}: we dialled);
        C{sent} says how many have gone so far.  The key given back ends
        it (L{upload_ended}).
        """

    def upload_ended(key: object) -> None:
        """
        The response L{upload_began} gave C{key} for ended, finished or not.
        """
