"""
Real processes: one overlay neighbour floods a peer with 10,000 searches
(100 times its allowance, for 5 seconds, reconnecting whenever it is cut).
It is throttled (empty answers at once, nothing forwarded), then cut off;
after three cuts its host is refused for a while; meanwhile the searches of well-behaved
peers keep finding everything, within twice their unloaded time.

The flooder is a separate process (run this file with a port), so that it
does not share the test's interpreter with the searches being timed.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.common import STRIKES
from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork
from p2pshare.peer.search import FLOOD_LIMIT, SEARCH_BURST
from p2pshare.topo import parse_topo

FLOOD = 10_000
FLOOD_SECONDS = 5.0
FLOODER_HOST = "127.0.0.2"  # its own host, so that cooling off hits it alone
# Well-behaved peers search at 10 a second, half their allowance (20/s).
WELL_BEHAVED_PAUSE = 0.1


def find(control: str, pattern: str) -> tuple[float, list[str]]:
    """
    One search through a peer's control socket: (seconds, holders found).
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(control.removeprefix("unix:"))
        started = time.monotonic()
        s.sendall(f"FIND {pattern}\r\n".encode())
        reader = s.makefile("rb")
        holders = []
        while (line := reader.readline()).startswith(b"ITEM matches "):
            holders.append(json.loads(line[len(b"ITEM matches "):])["holder"])
        took = time.monotonic() - started
    assert line.startswith(b"OK "), line
    assert json.loads(line[3:])["count"] == len(holders)
    return took, sorted(holders)


def ticket(meta_port: int) -> tuple[socket.socket, str]:
    """
    Register as "flooder" with the metadata server (from the flooder's own
    host; without a check nonce, so a leaf nobody is sent to) and return
    the registration and the ticket it gets, which a HELLO must show.
    """
    s = socket.create_connection(("127.0.0.1", meta_port), timeout=30,
                                 source_address=(FLOODER_HOST, 0))
    s.sendall(b"P2P port=7999 name=flooder\r\n")
    reader = s.makefile("rb")
    while not (line := reader.readline()).startswith(b"TICKET "):
        assert line, "the metadata server closed the registration"
    return s, line.split()[1].decode()


def flood(port: int, meta_port: int) -> dict[str, object]:
    """
    Join as a neighbour and send FLOOD searches in batches spread over
    FLOOD_SECONDS; when cut off, connect again and go on.  Returns what
    the first connection heard, and what the others were told.
    """
    registration, shown = ticket(meta_port)
    sent = 0
    first: list[bytes] | None = None
    refusals: list[bytes] = []
    started = time.monotonic()
    batch = 50
    while sent < FLOOD:
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(FLOODER_HOST, 0))
        reader = s.makefile("rb")
        heard: list[bytes] = []
        s.sendall(f"HELLO flooder 7999 ticket={shown}\r\n".encode())
        heard.append(reader.readline())
        listener = threading.Thread(target=heard.extend, args=(reader,))
        listener.start()
        try:
            while sent < FLOOD:
                lines = b"".join(
                    f"SEARCH {uuid.uuid4().hex} 1 5000 held-by-*\r\n".encode()
                    for _ in range(batch)
                )
                sent += batch  # attempted, whether or not the peer still listens
                s.sendall(lines)
                ahead = started + FLOOD_SECONDS * sent / FLOOD - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the load, not waiting for readiness
        except OSError:
            # Cut off mid-flood, as it should be; keep the pace before
            # trying again.
            ahead = started + FLOOD_SECONDS * sent / FLOOD - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        listener.join(30)
        s.close()
        if first is None:
            first = heard
        else:
            refusals.append(heard[0])
    registration.close()
    assert first is not None
    return {"first": [line.decode() for line in first], "refusals": [r.decode() for r in refusals]}


@pytest_twisted.ensureDeferred
async def test_a_flood_of_searches_is_throttled_then_cut_and_others_go_on(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        await net.start_network(4)
        topo = {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}
        names = await net.names()
        for name, key in names.items():
            atomic_write(net.root / key / "shared" / f"held-by-{name}", name.encode())
            await net.peers[key].wait_for("sharing held-by-", 30)
        victim = next(n for n in sorted(topo) if len(topo[n]) < 2)
        searcher = next(n for n in sorted(topo) if n != victim)
        control = net.control(names[searcher])
        everyone = sorted(topo)

        def unloaded() -> list[float]:
            times = []
            for _ in range(30):
                took, holders = find(control, "held-by-*")
                assert holders == everyone
                times.append(took)
                time.sleep(WELL_BEHAVED_PAUSE)
            return times

        quiet = await deferToThread(unloaded)

        done = threading.Event()

        def loaded() -> list[float]:
            times = []
            while not done.is_set() and len(times) < 2000:
                took, holders = find(control, "held-by-*")
                assert holders == everyone  # nothing lost under the flood
                times.append(took)
                time.sleep(WELL_BEHAVED_PAUSE)
            return times

        port = int((net.root / names[victim] / "port").read_text())
        during = deferToThread(loaded)
        flooder = await deferToThread(
            subprocess.run, [sys.executable, __file__, str(port), str(net.meta_port)],
            capture_output=True, text=True, timeout=60,
        )
        done.set()
        busy = await during
        assert flooder.returncode == 0, flooder.stderr
        report = json.loads(flooder.stdout)
        heard = [line.encode() for line in report["first"]]

        # Throttled, then cut: the flooder had its allowance answered,
        # then empty answers at once, then the door.
        assert heard[0].startswith(f"ACCEPT {victim} beat=5000 ticket=".encode())  # its heartbeat, for the link
        results = [line for line in heard if line.startswith(b"RESULTS ")]
        assert SEARCH_BURST <= len(results) < FLOOD
        assert heard[-1].startswith(b"ERROR cooling-off "), heard[-3:]
        await net.peers[names[victim]].wait_for("searches over its allowance", 10)
        # It comes back and is cut again; once three of its connections
        # have been cut, its host is refused for a while, every time it
        # comes back; the others are not.
        refusals = report["refusals"]
        again = [r for r in refusals if r.startswith("ACCEPT ")]
        assert len(again) == STRIKES - 1, refusals[:5]
        assert refusals[len(again):] and all(
            r.startswith("ERROR cooling-off ") for r in refusals[len(again):]
        ), refusals[:5]
        assert (await deferToThread(find, control, "held-by-*"))[1] == everyone

        # Well-behaved searches, during the flood, within twice their
        # unloaded time.
        print(f"unloaded median {statistics.median(quiet) * 1000:.1f} ms, "
              f"during the flood {statistics.median(busy) * 1000:.1f} ms over {len(busy)} searches",
              file=sys.stderr)
        assert busy, "no search ran during the flood"
        assert statistics.median(busy) <= 2 * statistics.median(quiet)
        assert len(results) <= SEARCH_BURST * 10 + FLOOD_LIMIT + 500  # bounded work
    finally:
        await net.stop_all()



if __name__ == "__main__":
    print(json.dumps(flood(int(sys.argv[1]), int(sys.argv[2]))))
