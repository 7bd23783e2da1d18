"""
p2pshare: a small peer-to-peer file-sharing network on Twisted.

Roles: L{p2pshare.meta} (the metadata server) and L{p2pshare.peer} (a peer);
L{p2pshare.wire} is the line format both speak; L{p2pshare.cli} is the
C{p2p} command.
"""

__version__ = "0.1.0"
