"""
The metadata server: registers peers, refers newcomers into the overlay and
keeps the topology (L{p2pshare.meta.registry}, L{p2pshare.meta.server},
L{p2pshare.meta.tap}).
"""
