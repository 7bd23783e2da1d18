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
        # The token this one replaced (--reset-token), said once to the
        # metadata server so that it moves the name over to the new one.
        self.old_token: str | None = None

    @staticmethod
    def reset(state_dir: Path) -> None:
        """
        Replace the token (after a leak): the old one is kept aside until
        the metadata server has moved the name to the new one.
        """
        token_file = state_dir / "token"
        if token_file.exists():
            os.replace(token_file, state_dir / "token.old")

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
        old_file = self.state_dir / "token.old"
        if old_file.exists():
            self.old_token = old_file.read_text().strip() or None
        name_file = self.state_dir / "name"
        if self.name is None and name_file.exists():
            self.name = name_file.read_text().strip() or None

    def moved(self) -> None:
        """
        The metadata server knows the new token: the old one is forgotten.
        """
        if self.old_token is not None and self.state_dir is not None:
            (self.state_dir / "token.old").unlink(missing_ok=True)
        self.old_token = None

    def named(self, name: str) -> None:
        """
        The metadata server gave us C{name}: keep it (the first one only).
        """
        if self.name is not None:
            return
        self.name = name
        if self.state_dir is not None:
            atomic_write(self.state_dir / "name", f"{name}\n".encode())
