"""
Admission to a private network: the network secret, the proofs made from
it, and signed URLs for the HTTP side.

This module is pure: no reactor, no transport.  L{p2pshare.channel} drives
the challenge-response on every line-protocol connection; the peer's HTTP
resource checks signed URLs.  Both compare proofs in constant time.

The exchange (docs/security.rst), with C{I} the side that connected and
C{R} the side that accepted::

    I -> R   AUTH  role_I name_I nonce_I
    R -> I   CHALLENGE nonce_R
    I -> R   PROOF mac("initiator", transcript)
    R -> I   PROOF mac("responder", transcript)

where the transcript is both roles, both names and both nonces, and
C{mac} is HMAC-SHA256 keyed with the secret.  C{R} says nothing but a fresh
nonce until C{I} has proved itself, and C{I} expects a proof bound to the
peer it meant to reach; a recorded exchange does not fit a fresh nonce.
"""

from __future__ import annotations

from pathlib import Path

# hashlib (it loads OpenSSL's libcrypto), hmac and secrets are imported
# where they are used: the p2p command imports this module for its
# constants and its errors, and most of its commands never make a proof
# or a nonce.

META_IDENTITY = ("meta", "meta")  # the metadata server's role and name in the handshake
CONTROL_IDENTITY = ("peer", "control")  # a peer's TCP control port, in the same handshake
CONTROL_TOKEN = "control.token"  # in the peer's data dir: what a TCP control client proves
MIN_SECRET_BYTES = 16
URL_LIFETIME = 600  # seconds a signed URL stays valid
URL_LIFETIME_MAX = 86400  # a signature claiming to last longer is refused


class SecretError(ValueError):
    """
    A secret file that cannot be used; the text says why in one sentence.
    """


def load_secret(path: str | None) -> Secret | None:
    """
    The secret in C{path}, or L{None} (an open network) without one.
    """
    return None if path is None else Secret.from_file(path)


def describe(secret: Secret | None, path: str | None) -> str:
    """
    What a role says at start-up about admission to its network.
    """
    if secret is None:
        return "this network is OPEN: anyone who can reach it may join (--secret-file makes it private)"
    return f"this network is private: only holders of the secret in {path} are admitted"


def new_nonce() -> str:
    import secrets

    return secrets.token_hex(16)


def new_secret_text() -> str:
    """
    A fresh secret, as written by C{p2p secret}.
    """
    import secrets

    return secrets.token_hex(32) + "\n"


class Secret:
    """
    The network secret: every member holds the same bytes.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_SECRET_BYTES:
            raise SecretError(
                f"a network secret needs at least {MIN_SECRET_BYTES} bytes "
                "(p2p secret FILE writes a good one)"
            )
        self._key = key

    def __repr__(self) -> str:
        return "<Secret (hidden)>"  # never into a log or a manhole by accident

    @classmethod
    def from_file(cls, path: Path | str) -> Secret:
        """
        Read a secret file; surrounding white space is not part of it.
        """
        try:
            key = Path(path).read_bytes().strip()
        except OSError as e:
            raise SecretError(f"cannot read the secret file {path}: {e.strerror}") from None
        try:
            return cls(key)
        except SecretError as e:
            raise SecretError(f"{path}: {e}") from None

    def derive(self, label: str) -> bytes:
        """
        32 bytes for C{label} that only holders of the secret can compute
        (the network's TLS identity is made from them, p2pshare.tls).
        """
        return bytes.fromhex(self.mac("derive", label))

    def mac(self, *parts: str) -> str:
        import hashlib
        import hmac

        data = "\n".join(("p2pshare-1", *parts)).encode("utf-8")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def verify(self, proof: str, *parts: str) -> bool:
        import hmac

        return hmac.compare_digest(proof.encode("ascii", "replace"), self.mac(*parts).encode("ascii"))

    # The handshake.

    def proof(self, side: str, initiator: tuple[str, str, str], responder: tuple[str, str, str]) -> str:
        """
        The proof that C{side} ("initiator" or "responder") sends: an HMAC
        over both sides' role, name and nonce.
        """
        return self.mac("auth", side, *initiator, *responder)

    def check_proof(
        self, proof: str, side: str, initiator: tuple[str, str, str], responder: tuple[str, str, str]
    ) -> bool:
        return self.verify(proof, "auth", side, *initiator, *responder)

    # Signed URLs for the HTTP side.

    def sign_path(self, path: str, now: float, lifetime: int = URL_LIFETIME, where: str = "") -> str:
        """
        C{path} (as it goes on the request line, percent-encoded) with the
        query that proves membership until C{now + lifetime}, at the holder
        C{where} (C{HOST:PORT} as in the URL) and nowhere else.
        """
        expires = int(now) + lifetime
        return f"{path}?expires={expires}&sig={self.mac('url', where.lower(), path, str(expires))}"

    def check_path(
        self, path: str, expires: str, sig: str, now: float, where: str = ""
    ) -> str | None:
        """
        L{None} if C{sig} signs C{path} at C{where} until C{expires} and that
        is still ahead (and not absurdly far); otherwise what is wrong.
        """
        if not expires.isdigit() or len(expires) > 15:
            return "this peer serves members only: ask for a signed URL (p2p url)"
        if int(expires) < now:
            return "the signed URL has expired: sign it again (p2p url)"
        if int(expires) > now + URL_LIFETIME_MAX:
            return "the signed URL claims to last too long"
        if not self.verify(sig, "url", where.lower(), path, expires):
            return "the URL's signature does not match this network's secret, or this peer"
        return None


def authority(host: str, port: int) -> str:
    """
    C{HOST:PORT} as a URL names a holder (an IPv6 address in brackets):
    what a signed URL is bound to.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
