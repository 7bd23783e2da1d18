"""
L{Identity}: who a peer is, kept in its data dir.

The name the metadata server gave it (or the one it was told to take) and
the secret token that proves the name is ours, so that a restarted peer
takes its name back at once and nobody else can take it meanwhile.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from p2pshare.disk import atomic_write


class Identity:
    """
    @ivar name: this peer's name, once known.
    @ivar token: the secret that proves it (None without a data dir).
    """

    def __init__(self, name: str | None, state_dir: Path | None) -> None:
        self.name = name
        self.state_dir = state_dir
        self.token: str | None = None

    def load(self) -> None:
        """
        Read (or make, mode 0600) the token, and the name kept by a
        previous run unless we were given one.
        """
        if self.state_dir is None:
            return
        token_file = self.state_dir / "token"
        if not token_file.exists():
            atomic_write(token_file, secrets.token_hex(16).encode() + b"\n")
        os.chmod(token_file, 0o600)
        self.token = token_file.read_text().strip()
        name_file = self.state_dir / "name"
        if self.name is None and name_file.exists():
            self.name = name_file.read_text().strip() or None

    def named(self, name: str) -> None:
        """
        The metadata server gave us C{name}: keep it (the first one only).
        """
        if self.name is not None:
            return
        self.name = name
        if self.state_dir is not None:
            atomic_write(self.state_dir / "name", f"{name}\n".encode())
