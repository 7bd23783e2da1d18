from twisted.application.service import ServiceMaker

p2pmeta = ServiceMaker(
    "p2pshare metadata server", "p2pshare.meta.tap", "Register peers and keep the topology.", "p2pmeta"
)
p2ppeer = ServiceMaker(
    "p2pshare peer", "p2pshare.peer.tap", "Join the p2pshare overlay and share files.", "p2ppeer"
)
