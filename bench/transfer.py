"""
Transfer speed and memory, against baselines measured in the same run on
the same file over loopback.

(a) Serving: ``curl -o /dev/null`` from a p2pshare peer, against curl from
    ``python -m http.server`` (and nginx with sendfile, where installed).
(b) A verified download with ``p2p get`` (hash, write, fsync, rename),
    against doing the same by hand from the same holder:
    ``curl -o F && openssl dgst -sha256 F && sync F``.
(c) Peak RSS of the serving and the downloading peer, for the big file and
    for a 64 MiB one.
(d) The verified download of (b) over TLS (a CA from p2p certs, a second
    network), against (b)'s plain TCP: five alternating pairs.
(e) The same in a private network (a secret, so mutual TLS made from it,
    and signed URLs), against the open network's: three alternating pairs.

    python bench/transfer.py [--mib 512] [--sizes 64]

It prints its figures, and last the two ratios the issue judges, both
from this run: TLS / plain TCP (d) and p2p get / by hand (b), the
median of their pairs.  docs/performance.rst records them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from p2pshare.admission import new_secret_text
from p2pshare.launch import P2P, LocalNetwork


def write_random(path: Path, mib: int) -> None:
    """
    Write beside the share and move it in whole, so the peer never indexes
    a half-written file.
    """
    block = os.urandom(1 << 20)
    hidden = path.with_name("." + path.name + ".tmp")
    with open(hidden, "wb") as f:
        for i in range(mib):
            # Vary each block cheaply so the file does not repeat.
            f.write(i.to_bytes(8, "big") + block[8:])
    os.replace(hidden, path)


def timed(argv: list[str], **kw: object) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def best_of(n: int, f: object) -> float:
    return min(f() for _ in range(n))  # type: ignore[operator]


async def run(reactor: object, mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2p-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        net = LocalNetwork(reactor, root / "plain", timeout=600)
        secure = LocalNetwork(reactor, root / "tls", timeout=600, certs=root / "certs")
        secret = root / "network.secret"
        secret.write_text(new_secret_text())
        private = LocalNetwork(reactor, root / "private", timeout=600, secret_file=secret)
        for each in ("plain", "tls", "private"):
            (root / each).mkdir()
        try:
            getter, by_hand = await bench(net, root / "plain", mib)
            # (d) Both networks up at once, five alternating pairs: a
            # plain get and a TLS one meet the same state of the machine.
            _, secure_getter, _ = await two_peers(secure, root / "tls", mib)
            plains, tlss = [], []
            for _ in range(5):
                plains.append(get_once(net, root / "plain", getter))
                tlss.append(get_once(secure, root / "tls", secure_getter))
            await secure.stop_all()
            # (e) The same against a private network.
            _, private_getter, _ = await two_peers(private, root / "private", mib)
            opens, privates = [], []
            for _ in range(3):
                opens.append(get_once(net, root / "plain", getter))
                privates.append(get_once(private, root / "private", private_getter))
        finally:
            await net.stop_all()
            await secure.stop_all()
            await private.stop_all()
        ratios = sorted(p / t for p, t in zip(plains, tlss, strict=True))
        over_tls = ratios[len(ratios) // 2]
        print("    pairs (plain / TLS, s): "
              + ", ".join(f"{p:.2f}/{t:.2f}" for p, t in zip(plains, tlss, strict=True)))
        print(f"(d) verified download over TLS, {len(ratios)} alternating runs: best "
              f"{mib / min(tlss):,.0f} MiB/s, plain TCP best {mib / min(plains):,.0f} MiB/s; "
              f"ratio min {ratios[0]:.2f}, median {over_tls:.2f}, max {ratios[-1]:.2f} "
              f"(target 0.9)")
        ratios = sorted(o / p for o, p in zip(opens, privates, strict=True))
        print("    pairs (open / private, s): "
              + ", ".join(f"{o:.2f}/{p:.2f}" for o, p in zip(opens, privates, strict=True)))
        print(f"(e) verified download in a private network, 3 alternating runs: best "
              f"{mib / min(privates):,.0f} MiB/s, open network best "
              f"{mib / min(opens):,.0f} MiB/s; ratio min {ratios[0]:.2f}, median "
              f"{ratios[1]:.2f}, max {ratios[2]:.2f}")
        print(f"ratios at {mib} MiB, this run: TLS / plain TCP {over_tls:.2f} (target 0.9); "
              f"p2p get / curl + openssl + sync {by_hand:.2f} (target 1.3)")


async def two_peers(net: LocalNetwork, root: Path, mib: int) -> tuple[str, str, int]:
    """
    A metadata server, a holder sharing big.bin of C{mib} MiB, a getter.
    """
    meta = await net.start_meta(2)
    holder, holder_proc = await net.start_peer()
    getter, _ = await net.start_peer()
    await meta.wait_for("topology settled: 2 peers", 60)
    print(f"writing a {mib} MiB file ...", flush=True)
    write_random(root / holder / "shared" / "big.bin", mib)
    await holder_proc.wait_for("sharing big.bin", 600)
    return holder, getter, int((root / holder / "port").read_text())


def get_once(net: LocalNetwork, root: Path, getter: str) -> float:
    """
    One C{p2p get} of big.bin, in seconds, its previous copy deleted first.
    """
    (root / getter / "shared" / "big.bin").unlink(missing_ok=True)
    return timed(P2P + ["get", "big.bin", "--peer", net.control(getter)], stderr=subprocess.DEVNULL)


async def bench(net: LocalNetwork, root: Path, mib: int) -> tuple[str, float]:
    """
    (a) to (c); returns the getter's key and (b)'s median ratio.
    """
    holder, getter, port = await two_peers(net, root, mib)
    holder_proc, getter_proc = net.peers[holder], net.peers[getter]
    shared = root / holder / "shared"
    size = (shared / "big.bin").stat().st_size

    # (a) serving
    http_port = free_port()
    stock = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
        cwd=shared, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(http_port)
        curl = ["curl", "-sf", "-o", "/dev/null"]
        # Five alternating runs: each ratio compares neighbours in time.
        ratios, ours_all, theirs_all = [], [], []
        for _ in range(5):
            ours = timed(curl + [f"http://127.0.0.1:{port}/files/big.bin"])
            theirs = timed(curl + [f"http://127.0.0.1:{http_port}/big.bin"])
            ours_all.append(ours)
            theirs_all.append(theirs)
            ratios.append(theirs / ours)
    finally:
        stock.terminate()
        stock.wait(10)
    mbs = size / 2**20  # MiB
    ratios.sort()
    print(f"(a) serving {mib} MiB to curl, 5 alternating runs: p2pshare best "
          f"{mbs / min(ours_all):,.0f} MiB/s, python -m http.server best "
          f"{mbs / min(theirs_all):,.0f} MiB/s; ratio min {ratios[0]:.2f}, median "
          f"{ratios[2]:.2f}, max {ratios[-1]:.2f} (target: min >= 1.0)")
    if shutil.which("nginx"):
        print("    nginx: installed, but not measured by this version of the benchmark")
    else:
        print("    nginx: not installed here, not measured")

    # (b) verified download, 5 alternating runs.  Each run deletes its own
    # previous output just before it starts: a file deleted a second
    # earlier has had its pages handed back to the host by this VM, and
    # writing into fresh ones cost a 512 MiB download 0.4 s.
    out = root / "by-hand.bin"
    # This VM hands memory that has been free a while back to its host,
    # and the first writes into such memory cost several times more (a
    # first p2p get of 512 MiB took 1.9 to 2.2 s, the next 0.8 to 0.9 s;
    # which of the two methods met it first was luck).  Writing and
    # deleting twice the file's size first gives both methods memory the
    # host still backs.
    warm = root / "warm-up.bin"
    write_random(warm, 2 * mib)
    warm.unlink()
    ratios, hands, ourss = [], [], []
    for _ in range(5):
        out.unlink(missing_ok=True)
        hand = (
            timed(["curl", "-sf", "-o", str(out), f"http://127.0.0.1:{port}/files/big.bin"])
            + timed(["openssl", "dgst", "-sha256", str(out)])
            + timed(["sync", str(out)])
        )
        ours = get_once(net, root, getter)
        hands.append(hand)
        ourss.append(ours)
        ratios.append(hand / ours)
    print("    pairs (p2p get / by hand, s): " + ", ".join(f"{o:.2f}/{h:.2f}" for o, h in zip(ourss, hands, strict=True)))
    ratios.sort()
    print(f"(b) verified download, 5 alternating runs: p2p get best {mbs / min(ourss):,.0f} MiB/s, "
          f"by hand (curl, openssl dgst, sync) best {mbs / min(hands):,.0f} MiB/s; ratio min "
          f"{ratios[0]:.2f}, median {ratios[2]:.2f}, max {ratios[-1]:.2f} (target 1.3)")

    # (c) memory
    assert holder_proc.pid and getter_proc.pid
    print(f"(c) peak RSS after {mib} MiB: serving peer {peak_rss_mib(holder_proc.pid):.1f} MiB, "
          f"downloading peer {peak_rss_mib(getter_proc.pid):.1f} MiB")
    return getter, ratios[2]


def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # a bench may poll; tests may not
    raise RuntimeError("the stock server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="the size judged, in MiB")
    parser.add_argument("--sizes", default="64",
                        help="other sizes to run first, in MiB (comma; empty: none)")
    args = parser.parse_args()

    async def all_sizes(reactor: object) -> None:
        extra = {int(m) for m in args.sizes.split(",") if m}
        for mib in sorted(extra | {args.mib}):
            print(f"== {mib} MiB (fresh processes)", flush=True)
            await run(reactor, mib)

    react(lambda reactor: Deferred.fromCoroutine(all_sizes(reactor)))


if __name__ == "__main__":
    main()
