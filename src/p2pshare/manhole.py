"""
The operator's console (C{--manhole ENDPOINT}): Twisted's SSH manhole,
a Python prompt inside the running role, with the role's objects in its
namespace.

Credentials: on first start the role writes C{DATA-DIR/manhole.passwd}
(mode 0600) with the user C{admin} and a random password, and logs where
it is; the SSH host key is kept beside it.  The endpoint listens on
loopback unless an interface is given explicitly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.conch import manhole_tap
from twisted.logger import Logger

from p2pshare.common import atomic_write

log = Logger()
USER = "admin"
PASSWD = "manhole.passwd"
HOST_KEY = "manhole_host_key"


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


def manhole_service(endpoint: str, data_dir: Path, namespace: dict[str, Any]) -> IService:
    credentials(data_dir)
    log.info(
        "manhole on {endpoint}; log in as {user} with the password in {path}",
        endpoint=endpoint, user=USER, path=str(data_dir / PASSWD),
    )
    service: IService = manhole_tap.makeService(
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
    return service
