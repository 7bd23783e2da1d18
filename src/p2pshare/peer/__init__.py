"""
A peer: joins the overlay through referral chains, accepts or refers
newcomers, and answers its local control channel (L{p2pshare.peer.node},
L{p2pshare.peer.protocol}, L{p2pshare.peer.control}, L{p2pshare.peer.tap}).
"""
