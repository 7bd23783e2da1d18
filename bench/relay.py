"""
What a relay costs, against a direct transfer in the same run, on loopback.

Five peers of one network: a relay R (``--relay``); a holder H and a getter
D that nobody can dial (each ``--advertise``s an address where nothing
listens, so the metadata server's dial-back fails and both are leaves);
a holder H2 and a getter G that everyone reaches.  H and H2 share the same
file.  Alternating, G fetches it directly from H2 and D through R from H
(``p2p get --from``, verified, kept, fsynced), each time into an empty
folder.  Printed: each path's throughput, their ratio (relayed / direct,
the median of the pairs), and the relay's CPU per MiB relayed (user +
system time of its process, from /proc).

    python bench/relay.py [--mib 256] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.task import react

from p2pshare.launch import P2P, LocalNetwork

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import write_random  # noqa: E402  (one way to write the file)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """
    User and system time of process C{pid} so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def get(net: LocalNetwork, getter: str, holder: str, out: Path) -> float:
    """
    One verified C{p2p get} of big.bin from C{holder} alone, in seconds.
    """
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        P2P + ["get", "big.bin", "--from", holder, "-o", str(out), "--peer", net.control(getter)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
    )
    return time.perf_counter() - started


async def run(reactor: object, mib: int, pairs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2p-relay-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        net = LocalNetwork(reactor, root, timeout=120)
        try:
            meta = await net.start_meta(5)
            relay, relay_proc = await net.start_peer("--relay")
            near, near_proc = await net.start_peer()
            getter, _ = await net.start_peer()
            far, far_proc = await net.start_peer("--advertise", "127.0.0.254")
            behind, behind_proc = await net.start_peer("--advertise", "127.0.0.253")
            await meta.wait_for("topology settled: 5 peers", 120)
            for proc in (far_proc, behind_proc):
                await proc.wait_for("cannot reach this peer", 60)
            print(f"writing a {mib} MiB file to two holders ...", flush=True)
            write_random(root / near / "shared" / "big.bin", mib)
            shutil.copyfile(root / near / "shared" / "big.bin", root / far / "big.tmp")
            os.replace(root / far / "big.tmp", root / far / "shared" / "big.bin")
            await near_proc.wait_for("sharing big.bin", 600)
            await far_proc.wait_for("sharing big.bin", 600)
            holder_near, holder_far = _name_in(near_proc.output()), _name_in(far_proc.output())
            directs, relayeds, cpu = [], [], []
            for _ in range(pairs):
                directs.append(get(net, getter, holder_near, root / "direct"))
                before = cpu_seconds(relay_proc.pid)  # type: ignore[arg-type]
                relayeds.append(get(net, behind, holder_far, root / "relayed"))
                cpu.append(cpu_seconds(relay_proc.pid) - before)  # type: ignore[arg-type]
            status = subprocess.run(P2P + ["status", "--peer", net.control(relay)],
                                    capture_output=True, text=True, check=True).stdout
        finally:
            await net.stop_all()
    relay_line = next(line for line in status.splitlines() if line.startswith("relay:"))
    ratios = sorted(d / r for d, r in zip(directs, relayeds, strict=True))
    print("    pairs (direct / relayed, s): "
          + ", ".join(f"{d:.2f}/{r:.2f}" for d, r in zip(directs, relayeds, strict=True)))
    print(f"    {relay_line}")
    print(f"direct: best {mib / min(directs):,.0f} MiB/s; relayed: best "
          f"{mib / min(relayeds):,.0f} MiB/s; the relay's CPU: "
          f"{1000 * min(cpu) / mib:.1f} ms per MiB relayed (best of {pairs})")
    print(f"ratio at {mib} MiB, this run: relayed / direct {ratios[len(ratios) // 2]:.2f} "
          f"(median of {pairs} pairs)")


def _name_in(log: str) -> str:
    """
    A peer's name, from its "peer NAME ready on port" line.
    """
    for line in log.splitlines():
        if " ready on port " in line:
            return line.split(" ready on port ")[0].rsplit("peer ", 1)[1]
    raise RuntimeError("the peer never said it was ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    react(lambda reactor: run(reactor, args.mib, args.pairs))


if __name__ == "__main__":
    main()
