"""
The registry and the topology files: formats, persistence, reset.
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet.task import Clock

from p2pshare.disk import atomic_write
from p2pshare.meta.registry import SCHEMA_VERSION, Registry
from p2pshare.meta.server import MetaServer
from p2pshare.topo import parse_topo, topo_text


def test_topo_text_is_the_historical_format():
    reg = Registry()
    for name, port in [("s1", 1), ("s2", 2), ("s3", 3)]:
        reg.add(name, "127.0.0.1", port, 2)
    reg.set_neighbours("s1", ["s2", "s3"])
    reg.set_neighbours("s2", ["s1"])
    reg.set_neighbours("s3", ["s1"])
    assert topo_text(reg.peers()) == "s1: s2 s3\ns2: s1\ns3: s1\n"
    assert topo_text([]) == ""
    assert [(e.name, e.neighbours) for e in parse_topo("s1: s2 s3\ns2: s1\n")] == [
        ("s1", ["s2", "s3"]),
        ("s2", ["s1"]),
    ]
    with pytest.raises(ValueError, match="line 2"):
        parse_topo("s1: s2\nnonsense\n")


def test_registry_survives_reopening_and_reset_empties_it(tmp_path):
    path = str(tmp_path / "registry.sqlite")
    reg = Registry(path)
    assert reg.assign_name() == "s1"
    reg.add("s1", "127.0.0.1", 6001, 2)
    assert reg.assign_name() == "s2"
    reg.add("s2", "127.0.0.2", 6002, 4)
    reg.set_neighbours("s1", ["s2"])
    reg.set_neighbours("s2", ["s1"])
    reg.close()

    again = Registry(path)
    assert [(p.name, p.host, p.port, p.max_neighbours, p.placed, p.neighbours) for p in again.peers()] == [
        ("s1", "127.0.0.1", 6001, 2, True, ["s2"]),
        ("s2", "127.0.0.2", 6002, 4, True, ["s1"]),
    ]
    assert again.assign_name() == "s3"  # names keep counting up
    again.clear()
    assert again.peers() == []
    assert again.assign_name() == "s1"
    again.close()
    assert Registry(path).peers() == []


def test_assigned_names_skip_names_in_use():
    reg = Registry()
    reg.add("s1", "h", 1, 2)
    assert reg.assign_name(lambda name: name == "s2") == "s3"


def test_removing_a_peer_removes_its_line(tmp_path):
    reg = Registry(str(tmp_path / "r.sqlite"))
    reg.add("a", "h", 1, 2)
    reg.add("b", "h", 2, 2)
    reg.set_neighbours("a", ["b"])
    reg.remove("a")
    reg.close()
    assert [p.name for p in Registry(str(tmp_path / "r.sqlite")).peers()] == ["b"]


def test_an_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    Registry(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="schema version"):
        Registry(str(path))


def test_files_are_written_at_start_and_on_change_at_most_every_flush_interval(tmp_path):
    """
    A change after a quiet spell is written at once; changes that follow
    within the flush interval are written together at its end; nothing
    is later than that.
    """
    from types import SimpleNamespace

    clock = Clock()
    server = MetaServer(Registry(), clock, data_dir=tmp_path, expect=5, flush_interval=0.2)
    server.startService()
    topo, count = tmp_path / "topo.txt", tmp_path / "NumberOfServers.txt"
    assert (topo.read_bytes(), count.read_bytes()) == (b"", b"0\n")
    clock.advance(1)
    session = SimpleNamespace(beat=5, abort=lambda: None, heard_at=1e9)
    server.register(session, "s1", "127.0.0.1", 6001, 2)
    assert (topo.read_bytes(), count.read_bytes()) == (b"s1:\n", b"1\n")  # at once
    server.register(session, "s2", "127.0.0.1", 6002, 2)
    server.report("s1", ["s2"])
    server.report("s2", ["s1"])
    assert topo.read_bytes() == b"s1:\n"  # coalesced ...
    clock.advance(0.199)
    assert topo.read_bytes() == b"s1:\n"
    clock.advance(0.001)  # ... and written within the interval
    assert (topo.read_bytes(), count.read_bytes()) == (b"s1: s2\ns2: s1\n", b"2\n")
    clock.advance(1)
    server.disconnected("s2", graceful=True)
    assert (topo.read_bytes(), count.read_bytes()) == (b"s1:\n", b"1\n")
    server.register(session, "s3", "127.0.0.1", 6003, 2)
    server.stopService()  # a pending flush is done before stopping
    assert (topo.read_bytes(), count.read_bytes()) == (b"s1:\ns3:\n", b"2\n")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, b"one\n")
    atomic_write(target, b"two\n")
    assert target.read_bytes() == b"two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_tree_text_draws_the_topology():
    from p2pshare.topo import tree_text

    entries = parse_topo("s1: s2 s3\ns2: s1 s4\ns3: s1 s5\ns4: s2\ns5: s3\n")
    assert tree_text(entries) == (
        "s1\n"
        "├── s2\n"
        "│   └── s4\n"
        "└── s3\n"
        "    └── s5\n"
    )
    # A peer the root does not reach is drawn as a tree of its own.
    assert tree_text(parse_topo("a: b\nb: a\nc:\n")) == "a\n└── b\nc\n"


def test_a_version_1_registry_is_upgraded_in_place(tmp_path):
    from importlib import resources

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(resources.files("p2pshare.schema").joinpath("v1.sql").read_text())
    db.execute("INSERT INTO version VALUES (1)")
    db.execute("INSERT INTO peers (name, host, port, max_neighbours, joined, placed) "
               "VALUES ('s1', '127.0.0.1', 5001, 2, 1, 1)")
    db.commit()
    db.close()
    reg = Registry(str(path))
    assert [(p.name, p.token_hash) for p in reg.peers()] == [("s1", None)]
    reg.add("s1", "127.0.0.1", 5001, 2, "f" * 64)
    reg.close()
    assert Registry(str(path)).get("s1").token_hash == "f" * 64
    assert sqlite3.connect(path).execute("SELECT version FROM version").fetchone() == (SCHEMA_VERSION,)
