"""
The peer's web page for people (C{--ui}): search, browse, downloads, the
share and the network, in a browser, on a port of its own.

- L{p2pshare.peer.ui.guard}: who may use it (login tokens, sessions, the
  CSRF token, the C{Host} header), pure and on an injected clock.
- L{p2pshare.peer.ui.api}: what the page may ask of the peer, as JSON:
  the same requests the C{p2p} command makes.
- L{p2pshare.peer.ui.site}: the HTTP side (Twisted Web): the guard on
  every request, the static page, the API and its live stream.
"""
