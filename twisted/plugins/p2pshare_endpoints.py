"""
p2pshare's endpoint syntax: C{mtls:PORT:privateKey=KEY:trustRoots=DIR}
listens with TLS and admits only clients whose certificate the network's
CA signed (see p2pshare.tls).
"""

from p2pshare.tls import TLSServerParser

tlsServer = TLSServerParser()
