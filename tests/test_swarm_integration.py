"""
Real processes: one file fetched from many holders at once, verified piece
by piece; a holder with a corrupted copy is named and dropped, a holder
killed mid-download is replaced by the others, an interrupted download
resumes from its verified pieces, and files are found and fetched by
content (sha256:HEX).  Holders are capped with --upload-rate so that
downloads last long enough to be interrupted.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest_twisted
from twisted.internet.defer import TimeoutError
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import progress_at
from p2pshare.pieces import piece_size

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
SENT = re.compile(r"sent (\S+) bytes (\d+)-(-?\d+) \((\d+) bytes\)")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def sent(proc, name: str, since: int = 0) -> list[tuple[int, int]]:
    """
    (first byte, bytes) of every response a holder finished sending.
    """
    found = []
    for line in proc.lines[since:]:
        m = SENT.search(line)
        if m and m.group(1) == name:
            found.append((int(m.group(2)), int(m.group(4))))
    return found


async def network(net, holders: int, *holder_args: str, getters: int = 1):
    """
    A network where C{holders} peers (started with C{holder_args}) are
    about to share one file, and C{getters} others will fetch it.
    """
    meta = await net.start_meta(expect=holders + getters)
    holder_keys = [(await net.start_peer(*holder_args))[0] for _ in range(holders)]
    getter_keys = [(await net.start_peer())[0] for _ in range(getters)]
    await meta.wait_for(f"topology settled: {holders + getters} peers", 30)
    return meta, holder_keys, getter_keys


async def share(net, keys, name: str, data: bytes) -> None:
    for key in keys:
        atomic_write(net.root / key / "shared" / name, data)
    for key in keys:
        await net.peers[key].wait_for(f"sharing {name}", 60)


async def names_of(net) -> dict[str, str]:
    return {key: name for name, key in (await net.names()).items()}


@pytest_twisted.ensureDeferred
async def test_a_file_held_by_four_is_fetched_from_all_four_at_once(net):
    _, holders, [getter] = await network(net, 4, "--upload-rate", "4M")
    data = os.urandom(24 * 2**20)
    await share(net, holders, "big.bin", data)
    out = await deferToThread(run, *P2P, "get", "big.bin", "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    target = net.root / getter / "shared" / "big.bin"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    # Every holder served part of it, and together each byte about once.
    served = {key: sum(n for _, n in sent(net.peers[key], "big.bin")) for key in holders}
    assert all(served.values()), served
    assert len(data) <= sum(served.values()) <= len(data) + 4 * piece_size(len(data))
    names = await names_of(net)
    used = re.search(r"verified \S+ \S+ from (.*), sha256", out.stderr).group(1).split(", ")
    assert sorted(used) == sorted(names[key] for key in holders)
    # One source, when asked: one holder alone.
    target.unlink()
    marks = {key: len(net.peers[key].lines) for key in holders}
    out = await deferToThread(run, *P2P, "get", "big.bin", "--sources", "1", "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    asked = [key for key in holders if sent(net.peers[key], "big.bin", marks[key])]
    assert len(asked) == 1
    target.unlink()
    # --from names the one.
    chosen = holders[2]
    marks = {key: len(net.peers[key].lines) for key in holders}
    out = await deferToThread(run, *P2P, "get", "big.bin", "--from", names[chosen], "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    assert [key for key in holders if sent(net.peers[key], "big.bin", marks[key])] == [chosen]
    assert f"from {names[chosen]}, sha256" in out.stderr
    target.unlink()
    out = await deferToThread(run, *P2P, "get", "big.bin", "--from", "nobody", "--peer", net.control(getter))
    assert (out.returncode, out.stderr.strip()) == (1, "p2p get: the peer says: nobody does not hold big.bin")


@pytest_twisted.ensureDeferred
async def test_a_holder_with_a_corrupted_copy_is_named_and_dropped(net):
    _, holders, [getter] = await network(net, 3, "--upload-rate", "8M")
    data = os.urandom(16 * 2**20)
    await share(net, holders, "report.pdf", data)
    # One copy rots in place: same size, same modification time, so its
    # holder still advertises the old SHA-256.
    rotten = net.root / holders[0] / "shared" / "report.pdf"
    st = rotten.stat()
    with open(rotten, "r+b") as f:
        f.write(bytes(b ^ 0xFF for b in data))
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))
    names = await names_of(net)
    out = await deferToThread(run, *P2P, "get", "report.pdf", "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    target = net.root / getter / "shared" / "report.pdf"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert f"{names[holders[0]]} sent a corrupt piece of report.pdf; dropped" in out.stderr
    assert names[holders[0]] not in out.stderr.split("verified")[-1]  # not among those it came from
    await net.peers[getter].wait_for(f"{names[holders[0]]} sent a corrupt piece (", 10)


@pytest_twisted.ensureDeferred
async def test_a_holder_killed_mid_download_is_replaced_by_the_others(net):
    _, holders, [getter] = await network(net, 3, "--upload-rate", "4M")
    data = os.urandom(24 * 2**20)
    await share(net, holders, "big.bin", data)
    get = net.p2p("get", "big.bin", "--peer", net.control(getter))
    await progress_at(get, 20)
    victim = net.peers[holders[1]]
    victim.signal(signal.SIGKILL)
    await victim.when_ended(10)
    assert await get.when_ended(120) == 0, get.output()
    target = net.root / getter / "shared" / "big.bin"
    assert target.read_bytes() == data
    assert "Traceback" not in get.output()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def _percent(line: str) -> int:
    return int(re.search(r" (\d+)% ", line).group(1))


@pytest_twisted.ensureDeferred
async def test_an_interrupted_download_resumes_from_what_it_verified(net):
    """
    Ctrl-C at about 10%, SIGKILL of the downloading peer at about 50%,
    Ctrl-C at about 90%: each time the same command goes on, and the holder
    is never asked again for what was verified before (each round it sends
    at most what was not yet verified).
    """
    _, [holder], [getter] = await network(net, 1, "--upload-rate", "4M")
    data = os.urandom(32 * 2**20)
    await share(net, [holder], "big.bin", data)
    holder_proc = net.peers[holder]
    verified = 0  # bytes verified when the last interruption came
    for goal, how in ((10, "ctrl-c"), (50, "kill the peer"), (90, "ctrl-c"), (None, None)):
        mark = len(holder_proc.lines)
        get = net.p2p("get", "big.bin", "--peer", net.control(getter))
        if goal is None:
            assert await get.when_ended(120) == 0, get.output()
            break
        line = await progress_at(get, goal)
        shown = (_percent(line) - 1) * len(data) // 100  # verified at least (the % is rounded)
        if how == "ctrl-c":
            get.signal(signal.SIGINT)
            assert await get.when_ended(30) == 130
            assert "the same command resumes it" in get.output()
        else:
            peer = net.peers[getter]
            peer.signal(signal.SIGKILL)
            await peer.when_ended(10)
            await get.when_ended(30)
        # The response cut off by the interruption is logged by the holder
        # at once; wait for it, so that it counts for this round.
        try:
            await holder_proc.wait_for("sent big.bin", 10, mark + 1)
        except TimeoutError:
            pass
        this_round = sent(holder_proc, "big.bin", mark)
        # Only pieces not verified before this round were asked for.
        assert this_round and sum(n for _, n in this_round) <= len(data) - verified
        verified = shown
        if how == "kill the peer":
            await net.start_peer(key=getter)
    final = sent(holder_proc, "big.bin", mark)
    assert sum(n for _, n in final) <= len(data) - verified
    assert (net.root / getter / "shared" / "big.bin").read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_files_are_found_and_fetched_by_content(net):
    _, [holder], [getter] = await network(net, 1)
    data = os.urandom(3 * 2**20 + 5)
    sha = hashlib.sha256(data).hexdigest()
    await share(net, [holder], "report.pdf", data)
    names = await names_of(net)
    found = await deferToThread(run, *P2P, "search", f"sha256:{sha}", "--peer", net.control(getter))
    assert found.returncode == 0, found.stderr
    assert found.stdout == f"report.pdf\t{len(data)}\t{sha[:12]}\t1\t{names[holder]}\n"
    upper = await deferToThread(run, *P2P, "search", f"sha256:{sha.upper()}", "--peer", net.control(getter))
    assert upper.stdout == found.stdout
    none = await deferToThread(run, *P2P, "search", "sha256:" + "0" * 64, "--peer", net.control(getter))
    assert (none.returncode, none.stdout) == (1, "not found\n")
    out = await deferToThread(run, *P2P, "get", f"sha256:{sha}", "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    target = net.root / getter / "shared" / "report.pdf"
    assert out.stdout == f"{target}\n" and target.read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_peers_fetching_one_file_at_once_feed_each_other(net):
    """
    One seeder, capped; three peers fetch its file at once.  Each serves
    the pieces it has verified to the others (a search lists it as a
    partial holder meanwhile), so the seeder is not the only source.
    """
    _, [seeder], getters = await network(net, 1, "--upload-rate", "4M", getters=3)
    data = os.urandom(32 * 2**20)
    await share(net, [seeder], "big.bin", data)
    gets = [net.p2p("get", "big.bin", "--peer", net.control(key)) for key in getters]
    await progress_at(gets[0], 10)
    names = await names_of(net)
    # p2p status shows the transfers in progress, both ways.
    up = (await deferToThread(run, *P2P, "status", "--peer", net.control(seeder))).stdout
    assert re.search(r"^uploading big\.bin to 127\.0\.0\.1: .* of .* \(\d+%\), .*/s, direct$", up, re.M), up
    down = (await deferToThread(run, *P2P, "status", "--peer", net.control(getters[0]))).stdout
    # (from how many holders, when one is sending at that moment)
    assert re.search(r"^downloading big\.bin( from \d holders?)?: .* of 32\.0 MiB \(\d+%\), .*/s, direct$", down, re.M), down
    found = await deferToThread(run, *P2P, "search", "big.bin", "--peer", net.control(seeder))
    [row] = [line.split("\t") for line in found.stdout.splitlines()]  # one file
    partial = re.findall(r"(\S+) \(partial, \d+%\)", row[4])
    assert partial, found.stdout
    assert set(partial) <= {names[k] for k in getters}
    for get in gets:
        assert await get.when_ended(120) == 0, get.output()
    for key in getters:
        assert (net.root / key / "shared" / "big.bin").read_bytes() == data
    from_peers = sum(n for key in getters for _, n in sent(net.peers[key], "big.bin"))
    from_seeder = sum(n for _, n in sent(net.peers[seeder], "big.bin"))
    assert from_peers > 0, "no getter served another"
    assert from_seeder < 3 * len(data)
