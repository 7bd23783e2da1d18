"""
Encryption with a network's own certificate authority.

C{p2p certs DIR NAME...} makes the CA and one certificate per role
(L{make_certs}, with the C{cryptography} package).  A role then listens on
an C{mtls:} endpoint (mutual TLS: an endpoint-parser plugin of ours,
L{TLSServerParser}, so twistd and users type it like any other endpoint)
and connects with Twisted's own C{tls:} client endpoints; both spell the
files alike::

    mtls:5001:privateKey=certs/s1.pem:trustRoots=certs/trust
    tls:meta.example:5000:trustRoots=certs/trust:certificate=certs/s1.pem:privateKey=certs/s1.pem

The listening side asks every client for a certificate signed by a CA in
C{trustRoots}.  C{ssl:PORT:...:trustRoots=DIR}, the spelling of earlier
versions, still means the same (Twisted reads C{ssl:} itself, before any
plugin, so ours needs a prefix of its own; its C{tls:} listens with SNI
and asks no client for a certificate).  A peer listening like that also uses that
certificate and CA for the connections it opens to other peers and for
downloads (L{PeerTLS}); the metadata server is reached through the C{tls:}
endpoint given to C{--meta}, which checks the server's certificate against
C{trustRoots} and the host name.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import ssl as stdlib_ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM
from OpenSSL.SSL import Error, WantReadError
from twisted.internet import ssl, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString, wrapClientTLS
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from p2pshare.admission import Secret
from p2pshare.common import OncePerMinute
from p2pshare.disk import private_write

CERT_DAYS = 825
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
# OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h): pyOpenSSL sets it on
# every context it makes and exports no name for it (see whole_writes).
SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
# Bytes of records taken out of OpenSSL at a time (DirectTLS.seal), and
# written to the socket in one call.
SEALED_READ = 2**16
log = Logger()


class TLSConfigError(ValueError):
    """
    A TLS endpoint or certificate file that cannot be used; one sentence.
    """


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {path}: {e.strerror}") from None


def _certificate(path: str, what: str) -> ssl.Certificate:
    try:
        return ssl.Certificate.loadPEM(_read(path, what))
    except TLSConfigError:
        raise
    except Exception:
        raise TLSConfigError(f"{path} holds no PEM {what}") from None


@dataclass
class PeerTLS:
    """
    A role's own certificate and its network's CA: what it presents and
    what it accepts, on every TLS connection it opens or accepts.
    """

    certificate: ssl.PrivateCertificate
    authorities: list[ssl.Certificate]
    key_path: str = ""
    cert_path: str = ""

    @classmethod
    def load(cls, key_path: str, cert_path: str, trust_dir: str) -> PeerTLS:
        cert = _certificate(cert_path, "certificate")
        try:
            key = ssl.KeyPair.load(_read(key_path, "private key"), FILETYPE_PEM)
        except TLSConfigError:
            raise
        except Exception:
            raise TLSConfigError(f"{key_path} holds no PEM private key") from None
        cas = [_certificate(str(p), "CA certificate") for p in sorted(Path(trust_dir).glob("*.pem"))]
        if not cas:
            raise TLSConfigError(f"no CA certificate (*.pem) in {trust_dir}")
        try:
            return cls(
                ssl.PrivateCertificate.fromCertificateAndKeyPair(cert, key), cas, key_path, cert_path
            )
        except Exception:
            raise TLSConfigError(
                f"the private key in {key_path} does not belong to the certificate in {cert_path}"
            ) from None

    def options(self) -> ssl.CertificateOptions:
        """
        Context options for either side: present our certificate, require
        the other side's, and accept only those our CA signed.
        """
        return ssl.CertificateOptions(
            privateKey=self.certificate.privateKey.original,
            certificate=self.certificate.original,
            trustRoot=ssl.trustRootFromCertificates(self.authorities),
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            # Without a protocol list, a client offering ALPN (curl offers
            # h2 and http/1.1) is refused with an internal error.  The port
            # speaks HTTP/1.1 and the line protocol, which offers nothing.
            acceptableProtocols=[b"http/1.1"],
        )

    def stdlib_client(self) -> stdlib_ssl.SSLContext:
        """
        The same client side for Python's own C{ssl} module, used where a
        download reads a holder from a thread (peer/download/direct.py): our
        certificate presented, the holder's checked against the CA only.
        """
        context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # peers have no host names; the CA vouches
        context.verify_mode = stdlib_ssl.CERT_REQUIRED
        context.minimum_version = stdlib_ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(
            cadata="".join(ca.dumpPEM().decode("ascii") for ca in self.authorities)
        )
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """
        C{endpoint} wrapped in TLS with our certificate.  Peers are checked
        against the CA, not a host name: they are reached at whatever
        address they have (the secret handshake binds names).
        """
        return wrapClientTLS(self.options(), endpoint)  # type: ignore[arg-type]


def tls_failure(reason: Any) -> str | None:
    """
    What went wrong, in a few words, if a connection was lost to a failed
    TLS handshake (a certificate from another CA, plain TCP); else L{None}.
    """
    if reason is None or not hasattr(reason, "check") or not reason.check(Error):
        return None
    details = reason.value.args[0] if reason.value.args else []
    try:
        text = "; ".join(str(d[2]) for d in details) or "TLS error"
    except (TypeError, IndexError):
        text = str(reason.value)
    if "unknown ca" in text or "certificate verify failed" in text:
        text += " (the two sides hold different network secrets or CAs)"
    elif "did not return a certificate" in text or "certificate required" in text:
        text += " (the other side showed no certificate: it is not a member)"
    return text


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSServerParser:
    """
    C{mtls:PORT:privateKey=KEY:trustRoots=DIR} (and C{certificate=CERT} if
    the certificate is not in the key's file; C{interface=}, C{backlog=}
    as for C{tcp:}): listen with TLS, presenting that certificate and
    accepting only clients with a certificate signed by a CA in C{DIR}.
    """

    prefix = "mtls"  # mutual TLS (Twisted's own tls: listens with SNI, no client certificates)

    def parseStreamServer(  # type: ignore[override]  # mypy-zope reads the interface's reactor twice
        self, reactor: Any, *args: str, **kwargs: str
    ) -> TLSServerEndpoint:
        known = {"port", "privateKey", "certificate", "certKey", "trustRoots", "interface", "backlog"}
        unknown = sorted(set(kwargs) - known)
        if unknown or len(args) > 1:
            extra = ", ".join(unknown) or ":".join(args[1:])
            raise TLSConfigError(f"an mtls: endpoint takes no {extra}")
        port = args[0] if args else kwargs.get("port")
        if port is None or not port.isdigit():
            raise TLSConfigError("an mtls: endpoint starts with its port (mtls:PORT:...)")
        trustRoots = kwargs.get("trustRoots")
        if trustRoots is None:
            raise TLSConfigError(
                "an mtls: endpoint here needs trustRoots=DIR (the network's CA, from p2p certs)"
            )
        privateKey = kwargs.get("privateKey", "server.pem")
        certificate = kwargs.get("certificate") or kwargs.get("certKey")
        interface, backlog = kwargs.get("interface", ""), kwargs.get("backlog", "50")
        if not backlog.isdigit():
            raise TLSConfigError("backlog= is a number")
        tls = PeerTLS.load(privateKey, certificate or privateKey, trustRoots)
        inner = TCP4ServerEndpoint(reactor, int(port), backlog=int(backlog), interface=interface)
        return TLSServerEndpoint(inner, tls, reactor)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listen on C{inner} (a TCP endpoint) with mutual TLS as C{tls} says:
    our certificate presented, the client's required and checked against
    the network's CA.  A client that speaks plain text instead (a peer or
    C{curl} without TLS) is answered in plain text, in one sentence, and
    closed, and the refusal is logged: mixed security is refused, not left
    to time out.
    """

    def __init__(self, inner: IStreamServerEndpoint, tls: PeerTLS, clock: Any = None) -> None:
        self.inner = inner
        self.tls = tls
        self.clock = clock or getattr(inner, "_reactor", None)

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        tls_factory = TLSMemoryBIOFactory(whole_writes(self.tls.options()), False, factory)
        return self.inner.listen(_TLSOnly(tls_factory, self.clock))


def whole_writes(options: ssl.CertificateOptions) -> ssl.CertificateOptions:
    """
    C{options}, with their connections taking a large write whole: one
    call to OpenSSL makes every record of it (OpenSSL's own default).
    pyOpenSSL's contexts return after each 16 KiB record instead, so a
    sender in Python paid a round trip through it per record
    (L{DirectTLS}).  Twisted's own writes hand OpenSSL one record's worth
    at a time and loop over what it took, so nothing else changes.  Call
    it before the options make any connection.
    """
    options.getContext().clear_mode(SSL_MODE_ENABLE_PARTIAL_WRITE)
    return options


@dataclass
class DirectTLS:
    """
    An accepted connection's TLS, for a sender that seals a response body
    in records itself and writes them straight to the socket
    (L{p2pshare.peer.serving._TLSSender}), where Twisted's TLS layer would
    copy each 16 KiB record through Python and a fresh buffer or two.  The
    session, its keys and its checks stay Twisted's (the handshake, the
    peer's certificate, the request, the end of the response); only the
    body's records take a shorter way, and only on the reactor thread,
    between the layer's own writes: so they go on the wire in the order
    OpenSSL made them, which TLS requires.

    Neither Twisted nor pyOpenSSL offers a way in, so this reads a few
    private fields: what Twisted's layer and its TCP transport hold back
    (L{waiting}), and pyOpenSSL's memory BIO (L{seal}).  Where they are
    missing (another version), L{under} finds nothing and the body goes
    through the layer as before, or L{seal} reads the records out with
    pyOpenSSL's public call.
    """

    protocol: TLSMemoryBIOProtocol
    tcp: tcp.Connection
    _out: memoryview | None = None  # where seal() reads records to
    _pointer: Any = None  # the same, for OpenSSL

    @classmethod
    def under(cls, transport: Any) -> DirectTLS | None:
        """
        The TLS of the connection under C{transport} (a request's channel's
        transport), if it is Twisted's memory-BIO TLS straight over TCP
        (an C{mtls:} port); else L{None}.
        """
        while isinstance(transport, ProtocolWrapper) and not isinstance(
            transport, TLSMemoryBIOProtocol
        ):
            transport = transport.transport
        if not isinstance(transport, TLSMemoryBIOProtocol):
            return None
        below = transport.transport
        if not isinstance(below, tcp.Connection) or getattr(below, "TLS", True):
            return None  # TLS started inside the TCP transport (listenSSL): its own buffering
        if not all(hasattr(transport, f) for f in ("_appSendBuffer", "_lostTLSConnection")):
            return None
        return cls(transport, below)

    def waiting(self) -> str | None:
        """
        What records written to the socket now would overtake, if
        anything: C{"layer"} while the TLS layer holds writes of its own
        (or the session is ending), C{"socket"} while TCP's buffer holds
        bytes (the response's head, through the layer); L{None}: nothing,
        write away.  Twisted holds small writes to the layer until the
        reactor's next turn: they are flushed here, into TCP's buffer.
        """
        layer: Any = self.protocol
        if layer.disconnecting or layer._lostTLSConnection or layer._appSendBuffer:
            return "layer"
        aggregator = getattr(layer, "_aggregator", None)
        if aggregator is not None:
            aggregator.flush()
        if layer._appSendBuffer:
            return "layer"
        below: Any = self.tcp
        if len(below.dataBuffer) - below.offset + getattr(below, "_tempDataLen", 1):
            return "socket"
        return None

    def seal(self, plain: memoryview) -> Iterator[memoryview]:
        """
        C{plain} in TLS records, in the order they must go on the wire
        (after anything OpenSSL had waiting to send), in blocks of at most
        L{SEALED_READ} bytes.  Each block is read into one buffer reused
        for the next: use it before asking for the next.  OpenSSL's errors
        (L{Error}) pass through: the connection cannot go on.
        """
        connection = self.protocol.getHandle()
        while plain:
            taken = connection.send(plain)  # all of it (whole_writes), else a record
            plain = plain[taken:]
        sealed = getattr(connection, "_from_ssl", None)  # the memory BIO OpenSSL writes to
        if _OPENSSL is None or sealed is None:
            while True:  # pyOpenSSL's way: a fresh buffer and a copy of it each time
                try:
                    yield memoryview(connection.bio_read(SEALED_READ))
                except WantReadError:  # nothing more to send
                    return
        ffi, lib = _OPENSSL
        if self._out is None:
            self._out = memoryview(bytearray(SEALED_READ))
            self._pointer = ffi.from_buffer(self._out)
        while (n := lib.BIO_read(sealed, self._pointer, SEALED_READ)) > 0:
            yield self._out[:n]


def _openssl_bindings() -> tuple[Any, Any] | None:
    """
    The C functions under pyOpenSSL, to read records out of a memory BIO
    into a buffer of ours (its own C{bio_read} allocates a fresh one and
    copies it into a fresh C{bytes} each time, a good part of a TLS
    sender's CPU); L{None} if this pyOpenSSL has them elsewhere.
    """
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None
    return (ffi, lib) if hasattr(lib, "BIO_read") and hasattr(ffi, "from_buffer") else None


_OPENSSL = _openssl_bindings()


PLAIN_REFUSAL = (
    "this network uses TLS: its members hold its secret (--secret-file) or a "
    "certificate from its CA (mtls:/tls: endpoints)"
)


class _TLSOnlyProtocol(Protocol):
    """
    Looks at the first byte a client sends: a TLS handshake record (22)
    hands the connection to the TLS protocol for good (the transport talks
    to it directly from then on: nothing stays in between); anything else
    is plain text at a TLS port, answered and closed.  The TLS protocol is
    made at once, so that connection caps count a client that says
    nothing, and deadlines watch it.
    """

    def __init__(self, owner: _TLSOnly, addr: Any) -> None:
        self.owner = owner
        self.tls: Any = owner.wrapped.buildProtocol(addr)

    def connectionMade(self) -> None:
        if self.tls is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.tls.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        if not data:
            return
        if data[0] == 0x16:
            transport.protocol = self.tls
            self.tls.dataReceived(data)
        else:
            self.refusePlain(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.tls is not None:
            self.tls.connectionLost(reason)

    def refusePlain(self, data: bytes) -> None:
        transport: Any = self.transport
        host = str(getattr(transport.getPeer(), "host", "?"))
        now = self.owner.clock.seconds() if self.owner.clock is not None else 0.0
        if self.owner.told.due(host, now):
            log.warn("refused {host}: it spoke plain text to this TLS port", host=host)
        if _HTTP_REQUEST.match(data):
            body = f"This port speaks HTTPS only: {PLAIN_REFUSAL}.\n".encode()
            transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        else:
            transport.write(f"ERROR tls-required {PLAIN_REFUSAL}\r\n".encode())
        transport.loseConnection()


class _TLSOnly(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, clock: Any) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.told = OncePerMinute()

    def buildProtocol(self, addr: Any) -> _TLSOnlyProtocol:
        return _TLSOnlyProtocol(self, addr)


_HTTP_REQUEST = re.compile(rb"[A-Za-z]+ (/|https?://)")


def is_tls_hello(data: bytes) -> bool:
    """
    Does a connection that should speak plain text begin with a TLS
    handshake (a member of a TLS network at a plain port)?
    """
    return data[:1] == b"\x16" and data[1:2] == b"\x03"


def _alias(description: str) -> str:
    """
    C{ssl:...:trustRoots=DIR}, as earlier versions spelled a listening
    endpoint with a CA, is C{mtls:...}.
    """
    if description.startswith("ssl:") and "trustRoots=" in description:
        return "mtls:" + description[len("ssl:"):]
    return description


BACKLOG = 1024  # connections the kernel queues before the role accepts them


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    L{serverFromString}, with C{ssl:...:trustRoots=} read as C{mtls:}, and
    a listen queue of L{BACKLOG} unless one is given: with Twisted's 50, a
    burst of connections (every peer coming back to a restarted metadata
    server, a flood from one host) overflowed it, and each connection
    dropped then waited a second for the kernel to try again.
    """
    description = _alias(description)
    if description.split(":", 1)[0] in ("tcp", "tcp6", "mtls") and "backlog=" not in description:
        description += f":backlog={BACKLOG}"
    return serverFromString(reactor, description)


def peer_tls(description: str) -> PeerTLS | None:
    """
    The TLS identity of a listening description (C{mtls:...}), or L{None}
    for a plain one; L{TLSConfigError} if its files cannot be used.
    """
    description = _alias(description)
    if description.startswith("ssl:"):
        raise TLSConfigError(
            "an ssl: endpoint here needs trustRoots=DIR (the network's CA, from p2p certs)"
        )
    if not description.startswith("mtls:"):
        return None
    try:
        ep = serverFromString(None, description)
    except TLSConfigError:
        raise
    except Exception as e:
        raise TLSConfigError(f"it is not a usable endpoint: {endpoint_problem(e)}") from None
    tls: PeerTLS | None = getattr(ep, "tls", None)
    if tls is None:
        raise TLSConfigError("the mtls: endpoint parser of p2pshare is not installed (twisted/plugins)")
    return tls


def mixed_security(port: str, meta: str | None, port_tls: bool) -> str | None:
    """
    What is wrong, in one sentence, with a role listening on C{port} (with
    the network's CA: C{port_tls}) and reaching the metadata server at
    C{meta} (L{None} for the metadata server itself): a TLS network has
    every link in mutual TLS, so a plain side, or TLS that checks no
    client certificate (C{tls:} as a listening endpoint), is refused.
    """
    if port.split(":", 1)[0] == "tls":
        return (
            f"--port {port}: tls: listens without asking clients for a certificate, so anyone "
            "could join a TLS network: use mtls:PORT:privateKey=KEY:trustRoots=DIR"
        )
    if meta is None:
        return None
    meta_tls = meta.split(":", 1)[0] in ("tls", "ssl")
    if port_tls and not meta_tls:
        return (
            f"--port is TLS but --meta {meta} is not: in a TLS network every link is; "
            "give --meta tls:HOST:PORT:trustRoots=DIR:certificate=PEM:privateKey=PEM"
        )
    if meta_tls and not port_tls:
        return (
            f"--meta is TLS but --port {port} is not: in a TLS network every peer listens "
            "with mtls:PORT:privateKey=KEY:trustRoots=DIR"
        )
    return None


def endpoint(reactor: Any, flag: str, description: str) -> IStreamServerEndpoint:
    """
    L{server_endpoint}, or L{StartupError} in one sentence naming the
    option (C{--port}) whose description cannot be used.
    """
    from p2pshare.startup import StartupError

    try:
        return server_endpoint(reactor, description)
    except TLSConfigError as e:
        raise StartupError(f"{flag} {description}: {e}") from None
    except Exception as e:
        raise StartupError(f"{flag} {description} is not a usable endpoint: {endpoint_problem(e)}") from None


def endpoint_problem(e: BaseException) -> str:
    """
    Why an endpoint description could not be used, in a few words (never
    OpenSSL's error tuples).
    """
    from OpenSSL.crypto import Error as CryptoError
    from twisted.python.filepath import UnlistableError

    if isinstance(e, (Error, CryptoError)):
        return "its certificate or key files hold no usable PEM data"
    if isinstance(e, UnlistableError):
        return "its trustRoots directory cannot be read"
    if isinstance(e, OSError) and e.strerror:
        name = f" {e.filename}" if e.filename else ""
        return f"{e.strerror.lower()}{name and ':' + name}"
    return str(e).strip().rstrip(".") or type(e).__name__


# A private network's TLS, made from its secret.

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def network_tls(
    secret: Secret, hosts: Sequence[str] = (), directory: Path | None = None
) -> PeerTLS:
    """
    The TLS identity of a member of the private network of C{secret}: every
    holder of the secret derives the same CA key from it, and signs itself
    a fresh certificate with it (valid for L{DEFAULT_HOSTS} and C{hosts}).
    So every connection of a private network is mutual TLS that only
    holders of the secret can complete: nobody else can read it, and a
    relay that passes a member's handshake on gets nothing it can use.
    With C{directory}, the files are written there too (C{trust/ca.pem},
    and C{member.pem}, mode 0600): Python's own TLS (downloads) and C{curl}
    read files.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    scalar = int.from_bytes(secret.derive("network CA 1") + secret.derive("network CA 2"), "big")
    ca_key = ec.derive_private_key(scalar % (P256_ORDER - 1) + 1, ec.SECP256R1())
    public = ca_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fingerprint = hashlib.sha256(public).hexdigest()
    # The same subject, key, serial and dates for every member: any
    # member's copy of the CA checks any other member's certificate.
    subject = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"p2pshare private network {fingerprint[:16]}"
    )])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(int(fingerprint[:30], 16))
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pshare member")]))
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    member_pem = cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key)
    if directory is None:
        return PeerTLS(
            ssl.PrivateCertificate.loadPEM(member_pem), [ssl.Certificate.loadPEM(ca_pem)]
        )
    (directory / "trust").mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "trust" / "ca.pem").write_bytes(ca_pem)
    private_write(directory / "member.pem", member_pem)
    member = str(directory / "member.pem")
    return PeerTLS.load(member, member, str(directory / "trust"))


def _names(hosts: Sequence[str]) -> list[Any]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*DEFAULT_HOSTS, *hosts]):  # in order, once each
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def local_addresses() -> list[str]:
    """
    This host's addresses (for a certificate that curl accepts at any of
    them): every interface's, as the system lists them.
    """
    try:
        import ifaddr
    except ImportError:
        return []
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if "%" not in address:
                found.append(address)
    return found


# Making a network's certificates.


def make_certs(directory: Path, names: list[str], hosts: Sequence[str] = ()) -> list[Path]:
    """
    Write the network's CA in C{directory} (C{trust/ca.pem}, the directory
    to name in C{trustRoots=}, and C{ca.key}; both kept if they exist) and
    one C{NAME.pem} (certificate and key, mode 0600) per name, valid for
    L{DEFAULT_HOSTS} and C{hosts}.  Returns the files written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_pem, ca_key_path = directory / "trust" / "ca.pem", directory / "ca.key"
    written = []
    if ca_pem.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pshare network CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        private_write(ca_key_path, _key_pem(ca_key))
        ca_pem.parent.mkdir(exist_ok=True)
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        written += [ca_pem, ca_key_path]
    sans = _names(hosts)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), *sans]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        path = directory / f"{name}.pem"
        private_write(path, cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key))
        written.append(path)
    return written


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
