"""
The everyday second floor in one process: replies that fit the wire
however long the names, a search that keeps only what answers it, a
download queue that survives a file it did not write, names that could
not travel, clocks from the future, and folders too big to list.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bounded_replies import Client, read_reply
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from p2pshare import wire
from p2pshare.peer import naming
from p2pshare.peer.control import ControlFactory
from p2pshare.peer.coverage import Coverage, Found
from p2pshare.peer.download.book import Ledger
from p2pshare.peer.download.transfer import FetchError
from p2pshare.peer.files import FolderFetched, PeerFiles
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.queue import DownloadQueue
from p2pshare.peer.share import ShareIndex, answers, is_shareable_name
from p2pshare.simnet import SimNet
from p2pshare.wire import Match

LONG = "é" * 100 + "/" + "ü" * 60 + ".txt"  # 1,296 bytes percent-encoded: fits


async def never(*args, **kwargs):
    await Deferred()  # a download that runs until it is cancelled


def control_of(tmp_path: Path) -> tuple[PeerNode, Client]:
    node = PeerNode(clock=Clock(), listen=None, meta=None, connect=None,
                    settings=PeerSettings(name="s1", state_dir=tmp_path))
    node.port, node.membership.state = 7001, "root"
    return node, Client(ControlFactory(node))


def test_a_folder_summary_of_many_long_failures_fits_the_wire(tmp_path):
    node, control = control_of(tmp_path)
    failures = [(f"big/{i:03d}-" + LONG, "exists with other content; use --force " * 20)
                for i in range(40)]
    result = FolderFetched(tmp_path / "big", 40, failed=failures,
                           notes=[f"note {i} " + LONG for i in range(30)])

    async def fetch(*args, **kwargs):
        return result

    node.fetch = fetch  # type: ignore[method-assign]
    summary, items = read_reply(control.say("FETCH big%2F"))
    assert summary["files"] == 40 and summary["path"] == str(tmp_path / "big")
    assert [tuple(f) for f in items["failed"]] == failures
    assert len(items["notes"]) == 30


def test_a_refusal_too_long_for_a_line_is_cut_not_lost(tmp_path):
    assert wire.encode(wire.error("ambiguous", "x" * 10_000)).__len__() <= wire.MAX_LINE
    paths = [f"{i}/" + "p" * 990 + "/same.txt" for i in range(8)]
    matches = [Match(p, 1, "ab" * 32, "s2", "127.0.0.1", 5002, 1, "") for p in paths]
    with pytest.raises(FetchError) as e:
        naming.choose("same.txt", [], matches)
    assert len(e.value.text) < 2000 and "give the full path" in e.value.text


def test_queued_names_that_would_not_fit_a_line_are_refused(tmp_path):
    node, control = control_of(tmp_path)
    name = wire.quote_name("a/" + "é" * 150)
    folder = wire.quote_path("/" + "ü" * 200)
    [line] = control.say(f"QUEUE {name} dir={folder}")
    assert line.startswith(b"ERROR bad-args the name and the folder together are too long")
    assert list(node.queue.listing()) == []


@pytest.mark.parametrize("kept", [
    '{"downloads": [1]}',
    '{"downloads": {"a": 1}}',
    '[1, 2]',
    'not json',
    '{"downloads": [{"id": "x", "name": "a"}, {"id": 2, "name": "b", "sources": "lots"}]}',
    '{"downloads": [{"id": 3, "name": 123}, {"id": 4, "name": "c", "directory": 5}]}',
    '{"downloads": [{"id": -1, "name": "d"}, {"id": 5, "name": "e", "state": "exploded"}]}',
])
def test_a_download_queue_the_peer_did_not_write_is_read_without_harm(tmp_path, kept):
    (tmp_path / "downloads.json").write_text(kept)
    queue = DownloadQueue(never, Clock(), tmp_path / "downloads.json")
    assert list(queue.listing()) == []
    queue.add("fine.txt")
    assert [e["name"] for e in queue.listing()] == ["fine.txt"]
    assert json.loads((tmp_path / "downloads.json").read_text())["downloads"][0]["id"] >= 1


def test_a_good_entry_beside_bad_ones_is_kept_and_a_running_one_resumes(tmp_path):
    (tmp_path / "downloads.json").write_text(json.dumps({"downloads": [
        {"id": 7, "name": "keep.bin", "state": "running", "done": 10, "total": 20},
        {"id": 8, "name": 9},
    ]}))
    started = []

    async def fetch(name, *args, **kwargs):
        started.append(name)
        await Deferred()

    queue = DownloadQueue(fetch, Clock(), tmp_path / "downloads.json")
    [entry] = queue.listing()
    assert (entry["id"], entry["state"]) == (7, "queued")
    queue.open()
    assert started == ["keep.bin"]


def test_the_queue_is_bounded(tmp_path, monkeypatch):
    from p2pshare.peer import queue as queue_module

    monkeypatch.setattr(queue_module, "MAX_QUEUED", 3)
    queue = DownloadQueue(never, Clock(), None)
    for i in range(3):
        queue.add(f"f{i}")
    with pytest.raises(FetchError) as e:
        queue.add("one too many")
    assert "the download queue is full" in e.value.text


def test_a_name_that_could_not_travel_is_not_shared(tmp_path):
    name = "uni/" + "é" * 127 + "/" + "é" * 127  # 512 bytes, 1,524 characters encoded
    assert not is_shareable_name(name)
    (tmp_path / "uni" / ("é" * 127)).mkdir(parents=True)
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "plain.txt").write_bytes(b"y")
    assert sorted(ShareIndex(tmp_path).refresh()) == ["plain.txt"]


def test_a_file_dated_in_the_future_is_still_offered(tmp_path):
    (tmp_path / "from-2030.txt").write_bytes(b"archive")
    future = time.time() + 5 * 365 * 86400
    os.utime(tmp_path / "from-2030.txt", (future, future))
    later = [3.0]
    index = ShareIndex(tmp_path, settle=2.0, now=lambda: time.time() + later[0])
    assert sorted(index.refresh()) == ["from-2030.txt"]


def test_a_match_must_answer_the_search(tmp_path):
    sha = "ab" * 32
    assert answers("live ogg", 0, "Music/Live/set.ogg", sha)
    assert not answers("live ogg", 0, "notmusic/evil.txt", sha)
    assert answers(f"sha256:{sha[:12]}", 0, "anything", sha)
    assert not answers("sha256:000000000000", 0, "anything", sha)
    assert answers("a.txt", 1, "A.TXT", sha) and not answers("a.txt", 1, "b/a.txt", sha)


def test_a_liars_matches_that_do_not_answer_the_search_are_dropped(tmp_path):
    net = SimNet.grown(tmp_path, 4, 2, 3)
    origin, liar = net.peers[0], net.peers[-1]

    def lies(pattern, hops, exact=0):
        made = [("music/a.txt", "cd" * 32), ("notmusic/evil.txt", "ef" * 32)]
        return [Match(name, 4, sha, liar.peer_name, liar.host or "127.0.0.1", liar.port, hops, "")
                for name, sha in made]

    liar.local_matches = lies  # type: ignore[method-assign]
    for pattern, kept in (("music/*", ["music/a.txt"]), ("sha256:" + "cd" * 6, ["music/a.txt"]),
                          ("evil", ["notmusic/evil.txt"]), ("nothing", [])):
        result = []
        origin.search.start(pattern).addCallback(result.append)
        net.flush()
        assert [m.name for m in result[0].matches] == kept, pattern


def test_a_folder_with_more_files_than_a_search_keeps_is_refused_whole(tmp_path):
    found = Found([Match("many/0.txt", 1, "ab" * 32, "s2", "127.0.0.1", 5002, 1, "")],
                  Coverage(2, 2), full=True)
    peer = PeerFiles(clock=Clock(), run_blocking=succeed, find=lambda *a: succeed(found),
                     me=lambda: "s1", on_files_changed=lambda: None, downloads=tmp_path,
                     downloader=SimpleNamespace(on_verified=None))  # type: ignore[arg-type]
    d = Deferred.fromCoroutine(peer.wanted("many/"))
    failure = []
    d.addErrback(failure.append)
    assert "holds more files than one get can list" in failure[0].value.text


def test_a_name_only_this_peer_holds_is_said_to_be_its_own(tmp_path):
    own = Match("Live Set/set.ogg", 6, "ab" * 32, "s1", "127.0.0.1", 5001, 0, "")

    def find(pattern, timeout, how, enough):
        return succeed(Found([own] if answers(pattern, how, own.name, own.sha256) else [],
                             Coverage(2, 2)))

    peer = PeerFiles(clock=Clock(), run_blocking=succeed, find=find, me=lambda: "s1",
                     on_files_changed=lambda: None, downloads=tmp_path,
                     downloader=SimpleNamespace(on_verified=None))  # type: ignore[arg-type]
    failure = []
    Deferred.fromCoroutine(peer.wanted("set.ogg")).addErrback(failure.append)
    assert failure[0].value.text == (
        "set.ogg is only in this peer's own share (Live Set/set.ogg); no other peer holds it"
    )


def test_search_takes_its_words_unquoted(tmp_path):
    from p2pshare.cli import parser

    args = parser().parse_args(["search", "live", "ogg", "--peer", "unix:/x"])
    assert args.pattern == ["live", "ogg"]  # main() joins them: "live ogg"


def test_a_download_stopped_while_it_looks_for_more_holders_stops(tmp_path):
    # p2p cancel, a pause on the web page, or Ctrl-C, while the download
    # asks the network who else holds the same bytes: the download ends
    # there (it went on, and kept the file, when the search's failure
    # was taken for "nobody else").
    match = Match("a.txt", 6, "ab" * 32, "s2", "127.0.0.1", 5002, 1, "")
    asked: list[Deferred] = []

    def find(pattern, timeout, how, enough):
        if pattern.startswith("sha256:"):
            asked.append(Deferred())
            return asked[-1]
        return succeed(Found([match] if answers(pattern, how, match.name, match.sha256) else [],
                             Coverage(2, 2)))

    downloader = SimpleNamespace(on_verified=None, new_ledger=Ledger, versions=lambda *a: [])
    peer = PeerFiles(clock=Clock(), run_blocking=succeed, find=find, me=lambda: "s1",
                     on_files_changed=lambda: None, downloads=tmp_path,
                     downloader=downloader)  # type: ignore[arg-type]
    d = Deferred.fromCoroutine(peer.fetch("a.txt", tmp_path))
    assert len(asked) == 1 and not d.called  # waiting on the search for the same bytes
    outcome = []
    d.addBoth(outcome.append)
    d.cancel()
    assert outcome[0].check(CancelledError), outcome[0]
    assert not (tmp_path / "a.txt").exists()


def test_a_stopped_run_that_ends_anyway_changes_nothing(tmp_path):
    # A run that was paused or cancelled, and ends later all the same (it
    # could not be stopped at once), no longer speaks for its entry.
    late: list[Deferred] = []

    async def fetch(name, directory, force, progress, **kw):
        try:
            await Deferred()
        except CancelledError:
            late.append(Deferred())
            progress(5, 6, 1)
            return await late[-1]

    queue = DownloadQueue(fetch, Clock(), None)
    queue.open()
    entry = queue.add("a.txt")
    queue.pause(entry.id)
    queue.resume(entry.id)
    assert entry.state == "running" and len(late) == 1
    late[0].callback(SimpleNamespace(size=6, already=False, path=tmp_path / "a.txt"))
    assert (entry.state, entry.done) == ("running", 0)  # the first run's end is not this one's
    queue.cancel_one(entry.id)
    late[1].callback(SimpleNamespace(size=6, already=False, path=tmp_path / "a.txt"))
    assert entry.state == "cancelled"
