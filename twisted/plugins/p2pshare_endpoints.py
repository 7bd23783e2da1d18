"""
p2pshare's endpoint syntax: C{mtls:PORT:privateKey=KEY:trustRoots=DIR}
listens with TLS and admits only clients whose certificate the network's
CA signed (see p2pshare.tls); C{mdns:} connects to the metadata server
that announces itself on the LAN (see p2pshare.lan).
"""

from p2pshare.lan import MDNSClientParser
from p2pshare.tls import TLSServerParser

tlsServer = TLSServerParser()
mdnsClient = MDNSClientParser()
