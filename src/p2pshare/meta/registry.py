"""
The metadata server's registry: which peers are in, where they listen, and
each one's own list of neighbours.

The registry lives in SQLite (a versioned schema, C{schema/v*.sql}) and is
mirrored in memory, so reads cost nothing and every change is written
through at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from p2pshare.topo import TopoEntry

SCHEMA_VERSION = 2


@dataclass
class Activity:
    """
    What a peer last said it is doing (C{SUMMARY}, and the file count of
    C{NEIGHBOURS}), for the web page.  Not stored: peers say it again.
    """

    shared_files: int = 0
    shared_bytes: int = 0
    transfers: list[dict[str, object]] = field(default_factory=list)
    transfer_count: int = 0


@dataclass
class PeerRecord:
    """
    One peer of the network as the registry knows it: where it listens,
    its place in the join order, the token hash that owns its name, and
    its own list of neighbours (all stored); what it last said of its
    place and of its activity (not stored: peers say both again when they
    re-register).  What the server keeps about a I{live} peer beside this
    (its connection, its dial-back, referrals) is a L{p2pshare.meta.records.Peer}.
    """

    name: str
    host: str
    port: int
    max_neighbours: int
    joined: int
    placed: bool = False
    neighbours: list[str] = field(default_factory=list)
    token_hash: str | None = None
    # The neighbour it hangs from, or that it is the root.  A placed peer
    # with neither has lost its parent.
    uplink: str | None = None
    is_root: bool = False
    activity: Activity = field(default_factory=Activity)


def both_ends(peers: list[PeerRecord]) -> list[TopoEntry]:
    """
    The network as C{topo.txt} shows it: C{peers} in their order, each with
    the links that both of its ends report (a name that is not among
    C{peers}, or a link only one side claims, is not shown).
    """
    # Each list has a few names: looking in it beats building a set per
    # peer at every flush.
    by_name = {p.name: p.neighbours for p in peers}
    return [
        TopoEntry(p.name, [n for n in p.neighbours if p.name in by_name.get(n, ())], p.host, p.port)
        for p in peers
    ]


def _sql(name: str) -> str:
    return resources.files("p2pshare.schema").joinpath(name).read_text("utf-8")


def open_db(path: str) -> sqlite3.Connection:
    """
    Open (creating if need be) the registry database at C{path}, which may
    be C{":memory:"}.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    has_version = db.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='version'"
    ).fetchone()
    if not has_version:
        db.executescript("BEGIN;" + _sql("v1.sql") + "INSERT INTO version VALUES (1); COMMIT;")
    (version,) = db.execute("SELECT version FROM version").fetchone()
    while version < SCHEMA_VERSION:
        version += 1
        db.executescript(
            "BEGIN;" + _sql(f"upgrade-to-v{version}.sql")
            + f"UPDATE version SET version = {version}; COMMIT;"
        )
    if version != SCHEMA_VERSION:
        raise RuntimeError(
            f"registry {path} has schema version {version}; this p2pshare "
            f"knows version {SCHEMA_VERSION}"
        )
    return db


class Registry:
    """
    The peers of the network, persistent.  Changes are kept in memory at
    once and written to SQLite in one transaction per L{commit} (the
    metadata server commits at each flush, a few times a second at most).
    """

    def __init__(self, path: str = ":memory:") -> None:
        self._db = open_db(path)
        self._peers: dict[str, PeerRecord] = {}
        for name, host, port, max_n, joined, placed, token_hash in self._db.execute(
            "SELECT name, host, port, max_neighbours, joined, placed, token_hash "
            "FROM peers ORDER BY joined"
        ):
            self._peers[name] = PeerRecord(
                name, host, port, max_n, joined, bool(placed), token_hash=token_hash
            )
        for peer, neighbour in self._db.execute(
            "SELECT peer, neighbour FROM neighbours ORDER BY peer, position"
        ):
            self._peers[peer].neighbours.append(neighbour)

    def close(self) -> None:
        self.commit()
        self._db.close()

    def _write(self, sql: str, *rows: tuple[object, ...]) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.executemany(sql, rows)

    def commit(self) -> None:
        """
        Make every change so far durable (one transaction).
        """
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def clear(self) -> None:
        """
        Forget every peer and restart the name counter (C{--reset}).
        """
        self.commit()
        with self._db:
            self._db.execute("DELETE FROM neighbours")
            self._db.execute("DELETE FROM peers")
            self._db.execute("DELETE FROM counters")
        self._peers.clear()

    def __contains__(self, name: str) -> bool:
        return name in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, name: str) -> PeerRecord | None:
        return self._peers.get(name)

    def peers(self) -> list[PeerRecord]:
        """
        Every peer, in join order.
        """
        return list(self._peers.values())

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 1

    def _bump(self, name: str, value: int) -> None:
        self._write(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def assign_name(self, taken: Callable[[str], bool] = lambda name: False) -> str:
        """
        The next free name of the form C{sN} (not one C{taken} says is in
        use); the count survives restarts.
        """
        n = self._counter("next_peer")
        while f"s{n}" in self._peers or taken(f"s{n}"):
            n += 1
        self._bump("next_peer", n + 1)
        return f"s{n}"

    def add(
        self, name: str, host: str, port: int, max_neighbours: int, token_hash: str | None = None
    ) -> PeerRecord:
        """
        Register C{name} at C{host}:C{port}.  A peer already known keeps its
        place in the join order and its neighbours.
        """
        record = self._peers.get(name)
        if record is None:
            joined = self._counter("next_join")
            self._bump("next_join", joined + 1)
            record = self._peers[name] = PeerRecord(name, host, port, max_neighbours, joined)
        else:
            record.host, record.port, record.max_neighbours = host, port, max_neighbours
        record.token_hash = token_hash
        self._write(
            "INSERT INTO peers (name, host, port, max_neighbours, joined, placed, token_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "host = excluded.host, port = excluded.port, "
            "max_neighbours = excluded.max_neighbours, token_hash = excluded.token_hash",
            (name, host, port, max_neighbours, record.joined, int(record.placed), token_hash),
        )
        return record

    def remove(self, name: str) -> None:
        if self._peers.pop(name, None) is not None:
            self._write("DELETE FROM peers WHERE name = ?", (name,))

    def set_placed(self, name: str) -> None:
        self._peers[name].placed = True
        self._write("UPDATE peers SET placed = 1 WHERE name = ?", (name,))

    def set_neighbours(self, name: str, neighbours: list[str]) -> None:
        """
        Record C{name}'s own view of its neighbours, in link order.
        """
        record = self._peers[name]
        record.neighbours = list(neighbours)
        self._write("DELETE FROM neighbours WHERE peer = ?", (name,))
        self._write(
            "INSERT INTO neighbours (peer, position, neighbour) VALUES (?, ?, ?)",
            *[(name, i, n) for i, n in enumerate(neighbours)],
        )
        if neighbours and not record.placed:
            self.set_placed(name)


def topology_files(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "topo.txt", data_dir / "NumberOfServers.txt"
