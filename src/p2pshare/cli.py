"""
The C{p2p} command.

Exit status: 0 success, 1 the operation failed or found nothing, 2 bad
usage.  Errors are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost

from p2pshare.channel import RemoteError
from p2pshare.topo import TopoEntry, parse_topo, topo_text

DEFAULT_META = "tcp:127.0.0.1:5000"
DEFAULT_PEER = "unix:./p2ppeer-data/control.sock"


class Failed(Exception):
    """
    The operation failed; the message is the one sentence to print.
    """


def _topo_output(entries: list[TopoEntry]) -> str:
    return topo_text(entries) if entries else "empty network\n"


async def cmd_topo(reactor: Any, args: argparse.Namespace) -> int:
    from p2pshare.client import meta_topology

    if args.data_dir is not None:
        path = Path(args.data_dir) / "topo.txt"
        try:
            entries = parse_topo(path.read_text("utf-8"))
        except FileNotFoundError:
            raise Failed(f"{path} does not exist: is {args.data_dir} a p2pmeta data dir?") from None
        except ValueError as e:
            raise Failed(str(e)) from None
    else:
        entries = await _talk(args.meta, "the metadata server", meta_topology(reactor, args.meta))
    sys.stdout.write(_topo_output(entries))
    return 0


async def cmd_status(reactor: Any, args: argparse.Namespace) -> int:
    from p2pshare.client import control_request

    status = await _talk(args.peer, "the peer", control_request(reactor, args.peer, "STATUS"))
    neighbours = status["neighbours"]
    role = "root" if status["root"] else ("joined" if status["joined"] else "joining")
    lines = [
        f"name: {status['name']}",
        f"address: {status['host']}:{status['port']}",
        f"state: {role}",
        f"neighbours ({len(neighbours)} of at most {status['max_neighbours']}):",
    ]
    lines += [f"  {n['name']} at {n['host']}:{n['port']}" for n in neighbours] or ["  (none)"]
    print("\n".join(lines))
    return 0


async def cmd_demo(reactor: Any, args: argparse.Namespace) -> int:
    from p2pshare.demo import run_demo

    return await run_demo(reactor, peers=args.peers)


async def _talk(where: str, what: str, work: Awaitable[Any]) -> Any:
    try:
        return await work
    except (ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
        raise Failed(f"cannot reach {what} at {where}: is it running? ({_reason(e)})") from None
    except TimeoutError:
        raise Failed(f"{what} at {where} did not answer in time") from None
    except (ConnectionLost, ConnectionDone):
        raise Failed(f"{what} at {where} closed the connection") from None
    except RemoteError as e:
        raise Failed(f"{what} says: {e.text}") from None
    except ValueError as e:
        raise Failed(f"{where} is not a usable endpoint: {e}") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().rstrip(".")
    return text.splitlines()[0] if text else type(e).__name__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p", description="Use a p2pshare network.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    topo = sub.add_parser("topo", help="print the topology in the topo.txt format")
    source = topo.add_mutually_exclusive_group()
    source.add_argument("--meta", default=None, help=f"metadata server endpoint (default {DEFAULT_META})")
    source.add_argument("--data-dir", default=None, help="read topo.txt from a p2pmeta data dir")
    topo.set_defaults(run=cmd_topo)

    status = sub.add_parser("status", help="a peer's name and neighbours")
    status.add_argument("--peer", default=DEFAULT_PEER, help=f"control endpoint (default {DEFAULT_PEER})")
    status.set_defaults(run=cmd_status)

    demo = sub.add_parser("demo", help="run a local demonstration network")
    demo.add_argument("--peers", type=int, default=5, help="how many peers (default 5)")
    demo.set_defaults(run=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if getattr(args, "meta", "") is None and getattr(args, "data_dir", None) is None:
        args.meta = DEFAULT_META
    if args.command == "demo" and not 1 <= args.peers <= 50:
        parser().error("--peers is from 1 to 50")
    run: Callable[[Any, argparse.Namespace], Awaitable[int]] = args.run

    from twisted.internet import task

    async def body(reactor: Any) -> None:
        try:
            code = await run(reactor, args)
        except Failed as e:
            print(f"p2p {args.command}: {e}", file=sys.stderr)
            code = 1
        except Exception as e:  # one sentence, never a traceback
            print(f"p2p {args.command}: failed: {_reason(e)}", file=sys.stderr)
            code = 1
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
