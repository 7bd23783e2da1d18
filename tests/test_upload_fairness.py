"""
One address cannot hold every upload slot while others wait: the policy
of L{UploadSlots} on a L{Clock} (fair share, the floor rate, an address
alone using every slot, refusals), then a real peer whose 16 slots are
held by slow readers from 127.0.0.1 serving a newcomer from 127.0.0.2.
(tests/test_http_edges.py drives the same through both resources and the
three ways a body goes out: straight to a TCP socket, through a producer,
over TLS.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
CURL = shutil.which("curl") or "curl"  # .ci/run installs it; missing, the test fails
KiB, MiB = 2**10, 2**20


class Reader:
    """
    A client of one upload, as the slots see it: it has read C{burst}
    bytes at once, then C{rate} bytes a second; C{cut} says whether the
    peer cut it off.
    """

    def __init__(self, clock: Clock, host: str, rate: float = 0.0, burst: int = 0) -> None:
        from p2pshare.peer.serving import Upload

        self.clock, self.rate, self.burst = clock, rate, burst
        self.began = clock.seconds()
        self.cut = False
        self.upload = Upload(host, self.began, self.sent, self.cut_off)

    def sent(self) -> int:
        return int(self.burst + self.rate * (self.clock.seconds() - self.began))

    def cut_off(self) -> None:
        self.cut = True


def take(slots, clock: Clock, host: str, rate: float = 0.0, burst: int = 0) -> Reader | None:
    """
    A new upload to C{host}: its reader if it got a slot, else None (503).
    """
    reader = Reader(clock, host, rate, burst)
    return reader if slots.take(reader.upload) else None


def test_an_address_alone_may_hold_every_slot_at_any_speed():
    from p2pshare.peer.serving import UploadSlots

    clock, slots = Clock(), UploadSlots(4)
    readers = [take(slots, clock, "10.0.0.1") for _ in range(4)]  # reading nothing at all
    assert None not in readers and slots.used == 4
    clock.advance(100)
    assert take(slots, clock, "10.0.0.1") is None  # full: 503, and it cuts none of its own
    assert not any(r.cut for r in readers) and slots.used == 4
    slots.give(readers[0].upload)
    assert take(slots, clock, "10.0.0.1") is not None  # a freed slot is its again


def test_a_newcomer_cuts_the_slowest_upload_of_an_address_beyond_its_fair_share():
    from p2pshare.peer.serving import UploadSlots

    clock, slots = Clock(), UploadSlots(4)
    a = [take(slots, clock, "10.0.0.1", rate=r * MiB) for r in (4, 1, 3, 2)]
    clock.advance(1)
    b1 = take(slots, clock, "10.0.0.2")
    assert b1 is not None  # 10.0.0.1 held 4 of 4; two addresses: 2 each
    assert [r.cut for r in a] == [False, True, False, False]  # its slowest, at once
    slots.give(a[1].upload)  # its connection goes; the slot was given up already
    assert slots.used == 4
    b2 = take(slots, clock, "10.0.0.2", rate=MiB)
    assert b2 is not None  # 3 of 10.0.0.1's were still more than its share
    assert [r.cut for r in a] == [False, True, False, True]
    # Both at their share now: neither gets more, and nobody is cut.
    assert take(slots, clock, "10.0.0.2") is None
    assert take(slots, clock, "10.0.0.1") is None
    assert [r.cut for r in a] == [False, True, False, True] and slots.used == 4
    # A third address: 4 slots, 3 addresses, and two each is more than a
    # share; the slowest of those uploads is cut, whoever's it is.
    clock.advance(1)
    assert take(slots, clock, "10.0.0.3") is not None
    assert b1.cut and not b2.cut
    assert [r.cut for r in a] == [False, True, False, True]


def test_beyond_its_share_an_address_is_refused_while_others_hold_or_want_slots():
    from p2pshare.peer.serving import WAITING, UploadSlots

    clock, slots = Clock(), UploadSlots(4)
    b = take(slots, clock, "10.0.0.2")
    a = [take(slots, clock, "10.0.0.1") for _ in range(2)]
    assert b is not None and None not in a
    # 10.0.0.2 holds a slot: 10.0.0.1's share is 2 of 4, free slot or not.
    assert take(slots, clock, "10.0.0.1") is None and slots.used == 3
    assert take(slots, clock, "10.0.0.2") is not None  # its second: its share

    clock, slots = Clock(), UploadSlots(2)
    a1, b = take(slots, clock, "10.0.0.1"), take(slots, clock, "10.0.0.2")
    assert a1 is not None and b is not None
    # Full, nobody beyond a share (2 slots, 3 addresses: one each at
    # least), nobody judged slow yet: a third address waits (503) ...
    assert take(slots, clock, "10.0.0.3") is None
    slots.give(b.upload)
    # ... and while it waits, the slot freed is kept for it.
    assert take(slots, clock, "10.0.0.1") is None
    clock.advance(5)  # its Retry-After
    c = take(slots, clock, "10.0.0.3")
    assert c is not None and not a1.cut
    # An address that waited and gave up counts for WAITING seconds; once
    # nobody else holds or wants a slot, 10.0.0.1 may take them all.
    assert take(slots, clock, "10.0.0.4") is None
    slots.give(c.upload)
    assert take(slots, clock, "10.0.0.1") is None
    clock.advance(WAITING)
    assert take(slots, clock, "10.0.0.1") is not None
    assert slots.used == 2 and {u.host for u in slots.uploads} == {"10.0.0.1"}


def test_an_upload_slower_than_the_floor_is_cut_when_someone_waits():
    from p2pshare.peer.serving import FLOOR_RATE, RATE_WINDOW, UploadSlots

    clock, slots = Clock(), UploadSlots(2)
    fast = take(slots, clock, "10.0.0.1", rate=4 * FLOOR_RATE)
    # A quick start (the socket's buffers filled at once), then a crawl.
    slow = take(slots, clock, "10.0.0.2", rate=FLOOR_RATE / 4, burst=4 * MiB)
    assert fast is not None and slow is not None
    clock.advance(RATE_WINDOW / 2)
    assert take(slots, clock, "10.0.0.3") is None  # not judged before it has run a while
    clock.advance(RATE_WINDOW / 2)
    assert take(slots, clock, "10.0.0.3") is None  # over all its run it is fast enough
    assert not slow.cut
    clock.advance(RATE_WINDOW)
    newcomer = take(slots, clock, "10.0.0.3")  # over its recent past it crawls
    assert newcomer is not None
    assert slow.cut and not fast.cut and slots.used == 2


def test_under_an_upload_rate_cap_the_floor_is_below_each_slots_part_of_it():
    from p2pshare.peer.serving import RATE_WINDOW, UploadSlots

    for cap, cut in ((None, True), (512 * KiB, False)):
        clock = Clock()
        slots = UploadSlots(16, cap)
        readers = [take(slots, clock, f"10.0.0.{i}", rate=20 * KiB) for i in range(16)]
        clock.advance(2 * RATE_WINDOW)
        # A 512 KiB/s cap leaves 32 KiB/s to each of 16 slots: the floor is
        # half that, and 20 KiB/s is not cut for being slow.
        assert (take(slots, clock, "10.0.1.1") is not None) == cut
        assert any(r.cut for r in readers) == cut


def slow_readers(port: int, path: str, count: int) -> list[socket.socket]:
    """
    C{count} GETs from 127.0.0.1 that read the status line and then
    nothing more (a small receive buffer keeps them from taking much).
    """
    readers = []
    try:
        for _ in range(count):
            s = socket.socket()
            readers.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            assert head.startswith(b"HTTP/1.1 200 "), head  # it holds a slot
    except BaseException:
        for s in readers:
            s.close()
        raise
    return readers


@pytest_twisted.ensureDeferred
async def test_a_newcomer_is_served_while_slow_readers_hold_every_slot(net, tmp_path):
    await net.start_meta(expect=1)
    key, peer = await net.start_peer()
    data = os.urandom(8 * MiB)  # more than a reader's socket buffers take
    atomic_write(net.root / key / "shared" / "big.bin", data)
    await peer.wait_for("sharing big.bin", 30)
    port = int((net.root / key / "port").read_text())

    readers = await deferToThread(slow_readers, port, "/files/big.bin", 16)
    try:
        got = tmp_path / "got"
        curl = await deferToThread(
            subprocess.run,
            [CURL, "-s", "--max-time", "30", "--interface", "127.0.0.2", "-o", str(got),
             "-w", "%{http_code}", f"http://127.0.0.1:{port}/files/big.bin"],
            capture_output=True, timeout=60,
        )
        assert curl.stdout == b"200", curl  # with every slot held by one address, it was 503
        assert got.read_bytes() == data
        # One slow reader was cut for it, and the peer said so; the other 15
        # are still being served.
        [cut] = [line for line in peer.lines if "cut an upload to " in line]
        assert "cut an upload to 127.0.0.1, which held 16 of 16 slots" in cut
        assert cut.endswith("to serve 127.0.0.2")
        status = await deferToThread(
            subprocess.run, [*P2P, "status", "--peer", net.control(key)],
            capture_output=True, text=True, timeout=60,
        )
        uploading = [line for line in status.stdout.splitlines() if line.startswith("uploading ")]
        assert len(uploading) == 15, status.stdout
        assert all(line.startswith("uploading big.bin to 127.0.0.1:") for line in uploading)
    finally:
        for s in readers:
            s.close()
