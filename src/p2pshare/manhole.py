"""
The operator's console (C{--manhole ENDPOINT}): Twisted's SSH manhole,
a Python prompt inside the running role, with the role's objects in its
namespace.

Credentials: on first start the role writes C{DATA-DIR/manhole.passwd}
(mode 0600) with the user C{admin} and a random password, and logs where
it is; the SSH host key is kept beside it (mode 0600) and its
fingerprint logged at every start.  The endpoint listens on
loopback unless an interface is given explicitly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.conch import manhole_tap
from twisted.conch.ssh import keys
from twisted.logger import Logger

from p2pshare.disk import atomic_write, private_write
from p2pshare.startup import StartupError, listen_problem

log = Logger()
USER = "admin"
PASSWD = "manhole.passwd"
HOST_KEY = "manhole_host_key"


def reset_manhole(data_dir: Path) -> None:
    """
    Forget the manhole's password and host key: new ones are made at this
    start (after a leak; the old password no longer opens the console).
    """
    for name in (PASSWD, HOST_KEY):
        (data_dir / name).unlink(missing_ok=True)
    log.warn("manhole password and SSH host key replaced (--reset-manhole)")


def credentials(data_dir: Path) -> tuple[str, str]:
    """
    The manhole's user and password, created on first use.
    """
    path = data_dir / PASSWD
    if not path.exists():
        atomic_write(path, f"{USER}:{secrets.token_urlsafe(18)}\n".encode())
        log.info("manhole credentials written to {path}", path=str(path))
    os.chmod(path, 0o600)
    user, _, password = path.read_text().strip().partition(":")
    return user, password


def host_key(data_dir: Path) -> str:
    """
    Make the manhole's SSH host key on first use (mode 0600; Twisted's own
    would be world-readable), keep an existing one private, and return its
    SHA-256 fingerprint, for users to check when they first connect.
    """
    path = data_dir / HOST_KEY
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        try:
            private_write(path, pem, exclusive=True)
        except FileExistsError:
            pass  # made meanwhile by another start: use that one
    os.chmod(path, 0o600)
    try:
        fingerprint = keys.Key.fromFile(str(path)).fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    except (keys.BadKeyError, ValueError, OSError):
        raise StartupError(f"the manhole host key {path} cannot be read; remove it to make a new one") from None
    return str(fingerprint)


def manhole_service(endpoint: str, data_dir: Path, namespace: dict[str, Any]) -> IService:
    credentials(data_dir)
    log.info(
        "manhole SSH host key {path}, fingerprint {fingerprint}",
        path=str(data_dir / HOST_KEY), fingerprint=host_key(data_dir),
    )
    log.info(
        "manhole on {endpoint}; log in as {user} with the password in {path}",
        endpoint=endpoint, user=USER, path=str(data_dir / PASSWD),
    )
    try:
        service = manhole_tap.makeService(
            {
                "namespace": namespace,
                "passwd": str(data_dir / PASSWD),
                "sshPort": endpoint,
                "telnetPort": None,
                "sshKeyDir": str(data_dir),
                "sshKeyName": HOST_KEY,
                "sshKeySize": 2048,
            }
        )
    except Exception as e:
        raise StartupError(f"--manhole {endpoint} is not a usable endpoint: {e}") from None
    for child in service:
        if isinstance(child, StreamServerEndpointService):
            child._raiseSynchronously = True  # a busy port stops the role, not just the manhole
    return _Manhole(endpoint, service)


class _Manhole(MultiService):
    """
    The manhole's services, started with the role: a port that cannot be
    had is a L{StartupError} (Twisted would log it and go on without).
    """

    def __init__(self, endpoint: str, service: IService) -> None:
        super().__init__()
        self.endpoint = endpoint
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError:
            raise
        except Exception as e:
            raise StartupError(f"cannot listen on --manhole {self.endpoint}: {listen_problem(e)}") from None
