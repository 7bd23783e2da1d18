"""
The shared index and the command's progress display, as units.
"""

from __future__ import annotations

import hashlib
import io
import os

from p2pshare.cli import ProgressBar
from p2pshare.peer.share import ShareIndex, is_shareable_name, matches


def test_the_whole_tree_is_shared_but_nothing_hidden_and_nothing_outside(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_bytes(b"aaa")
    (share / ".hidden").write_bytes(b"h")
    (share / ".b.txt.part").write_bytes(b"partial")
    (share / "dir").mkdir()
    (share / "dir" / "inner.txt").write_bytes(b"i")
    (share / "Music" / "Live Set").mkdir(parents=True)
    (share / "Music" / "Live Set" / "été 2026.ogg").write_bytes(b"song")
    (share / ".git").mkdir()
    (share / ".git" / "config").write_bytes(b"secret")
    (share / "dir" / ".cache").mkdir()
    (share / "dir" / ".cache" / "x").write_bytes(b"x")
    (tmp_path / "outside.txt").write_bytes(b"o")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_bytes(b"f")
    os.symlink(tmp_path / "outside.txt", share / "link-out.txt")
    os.symlink(tmp_path / "outdir", share / "dir-out")
    os.symlink(share / "dir", share / "dir-in")  # a folder linked: not entered
    os.symlink(share / "a.txt", share / "link-in.txt")
    os.symlink(share / ".hidden", share / "link-to-dotfile")
    os.symlink(share / ".git" / "config", share / "dir" / "link-into-hidden")
    os.symlink(tmp_path / "missing", share / "dangling")
    index = ShareIndex(share)
    files = index.refresh()
    assert sorted(files) == ["Music/Live Set/été 2026.ogg", "a.txt", "dir/inner.txt", "link-in.txt"]
    assert files["a.txt"].size == 3
    assert files["a.txt"].sha256 == hashlib.sha256(b"aaa").hexdigest()
    assert files["dir/inner.txt"].name == "dir/inner.txt"
    for bad in ["../outside.txt", "link-out.txt", "dir", "dir-out/f",
                ".git/config", "dir/.cache/x", "dir/link-into-hidden", "dir//inner.txt",
                "/etc/passwd", "dir/../a.txt"]:
        assert index.resolve(bad) is None, bad
    assert index.resolve("dir/inner.txt") == str(share / "dir" / "inner.txt")
    assert [f.name for f in index.search("live ogg")] == ["Music/Live Set/été 2026.ogg"]
    assert [f.name for f in index.search("music/*")] == ["Music/Live Set/été 2026.ogg"]


def test_changes_are_noticed_and_unchanged_files_are_not_hashed_again(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"one")
    index = ShareIndex(tmp_path)
    index.refresh()
    first = index.files["a"]
    import p2pshare.peer.share as share_module

    hashed = []
    real = share_module.hash_file
    monkeypatch.setattr(share_module, "hash_file", lambda p: hashed.append(p) or real(p))
    index.refresh()
    assert index.files["a"] is first and hashed == []
    (tmp_path / "a").write_bytes(b"other content")
    (tmp_path / "b").write_bytes(b"new")
    index.refresh()
    assert index.files["a"].sha256 == hashlib.sha256(b"other content").hexdigest()
    assert sorted(index.files) == ["a", "b"] and len(hashed) == 2
    (tmp_path / "b").unlink()
    index.refresh()
    assert sorted(index.files) == ["a"]


def test_a_file_the_peer_verified_itself_is_not_hashed_again_unless_it_changed(tmp_path, monkeypatch):
    """
    A download ends with the file's hashes known: the share takes them
    as they are, so a 512 MiB download is not read a second time (it took
    a second after the download, before C{p2p get} answered) -- but only
    while the file is as it was when it was verified.
    """
    import p2pshare.peer.share as share_module
    from p2pshare.peer.share import SharedFile
    from p2pshare.pieces import hash_file

    for name in ("got", "changed"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
    index = ShareIndex(tmp_path)
    for name in ("got", "changed"):
        st = os.stat(tmp_path / name)
        sha, pieces = hash_file(str(tmp_path / name))
        index.learn(SharedFile(name, st.st_size, sha, (st.st_size, st.st_mtime_ns, st.st_ino), pieces))
    with open(tmp_path / "changed", "ab") as f:
        f.write(b"X")  # after it was verified
    hashed = []
    real = share_module.hash_file
    monkeypatch.setattr(share_module, "hash_file", lambda p: hashed.append(os.path.basename(p)) or real(p))
    index.refresh()
    assert hashed == ["changed"]
    assert index.files["got"].sha256 == hashlib.sha256(b"got" * 1000).hexdigest()
    assert index.files["changed"].sha256 == hashlib.sha256(b"changed" * 1000 + b"X").hexdigest()


def learned(index, directory, name):
    from p2pshare.peer.share import SharedFile
    from p2pshare.pieces import hash_file

    st = os.stat(directory / name)
    sha, pieces = hash_file(str(directory / name))
    index.learn(SharedFile(name, st.st_size, sha, (st.st_size, st.st_mtime_ns, st.st_ino), pieces))


def test_a_downloaded_file_is_shared_at_once_without_a_scan(tmp_path):
    (tmp_path / "old").write_bytes(b"old")
    index = ShareIndex(tmp_path)
    index.refresh()
    before = index.files
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "got").write_bytes(b"got")
    learned(index, tmp_path, "sub/got")
    assert index.add("sub/got")
    assert sorted(index.files) == ["old", "sub/got"]
    assert sorted(before) == ["old"]  # replaced, not changed: a reader sees one or the other
    # Not a file this peer verified, or changed since: a scan it is.
    (tmp_path / "other").write_bytes(b"x")
    assert not index.add("other")
    (tmp_path / "late").write_bytes(b"late")
    learned(index, tmp_path, "late")
    (tmp_path / "late").write_bytes(b"later, and longer")
    assert not index.add("late")
    assert sorted(index.files) == ["old", "sub/got"]


def test_a_scan_that_walked_past_a_file_added_meanwhile_keeps_it(tmp_path, monkeypatch):
    """
    A scan runs in a thread: a download can be kept and added after the
    walk passed its folder.  The scan's result must not drop it (it would
    be missing from searches until the next scan), nor take a file that
    is learned but not there yet (a download is told of its hashes just
    before the file appears).
    """
    import p2pshare.peer.share as share_module

    (tmp_path / "a").write_bytes(b"a")
    index = ShareIndex(tmp_path)
    (tmp_path / "got").write_bytes(b"got")
    learned(index, tmp_path, "got")
    learned_early = share_module.SharedFile("soon", 4, "0" * 64, (4, 0, 0))
    index.learn(learned_early)  # its file is not there yet
    real = share_module._walk
    monkeypatch.setattr(share_module, "_walk",
                        lambda top, *rest: ((n, e) for n, e in real(top, *rest) if n != "got"))
    index.refresh()
    assert sorted(index.files) == ["a", "got"]
    assert "soon" in index._learned and "got" not in index._learned


def test_names_and_patterns():
    assert is_shareable_name("report 2026 (final).pdf")
    assert is_shareable_name("ünïcödé.txt")
    assert is_shareable_name("music/live/set.ogg") and is_shareable_name("a b/c d")
    for bad in ["", ".dot", "a/.b", ".a/b", "a//b", "/a", "a/", "a/../b", "..", "a\\b", "a\nb",
                "a\x00b", "x" * 256, "a/" + "x" * 256, "/".join(["x" * 200] * 6)]:
        assert not is_shareable_name(bad), bad
    # Words, in any order, anywhere in the path, ignoring case.
    assert matches("report", "Report.pdf") and matches("REPORT pdf", "report.PDF")
    assert matches("live ogg", "music/Live/set.ogg") and matches("ogg live", "music/Live/set.ogg")
    assert not matches("live flac", "music/Live/set.ogg")
    assert not matches("   ", "a.txt")  # no word finds nothing, not everything
    # Globs on the whole path, ignoring case; * also crosses folders.
    assert matches("*.txt", "a.TXT") and matches("file-?.dat", "File-1.dat")
    assert matches("[ab].txt", "B.txt") and not matches("[ab].txt", "c.txt")
    assert matches("music/*.ogg", "music/Live/set.ogg") and not matches("*.ogg", "set.ogg.bak")
    # Exact: the whole path, ignoring case; a word is not enough.
    assert matches("report.pdf", "Report.PDF", exact=True)
    assert not matches("report", "report.pdf", exact=True)
    assert matches("*.txt", "*.txt", exact=True) and not matches("*.txt", "a.txt", exact=True)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    tty = Terminal()
    bar = ProgressBar(tty)
    for done in (0, 5 * 2**20, 10 * 2**20):
        bar.update(done, 10 * 2**20)
    bar.close()
    out = tty.getvalue()
    assert out.startswith("\r[") and out.endswith("\n")
    assert "\r[" + "#" * 30 + "] 10.0 MiB/10.0 MiB 100%" in out
    assert "B/s ETA" in out

    plain = io.StringIO()
    bar = ProgressBar(plain)
    for done in range(0, 10 * 2**20 + 1, 2**19):
        bar.update(done, 10 * 2**20)
    bar.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in plain.getvalue()
    assert lines[-1].startswith("progress: 10.0 MiB/10.0 MiB 100%")


def test_periodic_scans_of_a_big_share_take_a_twentieth_of_the_time(tmp_path, monkeypatch):
    """
    The share is scanned every 2 s, unless a walk takes so long that this
    would cost more than a twentieth of the time (50,000 files: 13% of a
    core, idle); then after nineteen times the last walk's length.
    """
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import Clock

    from p2pshare.peer.files import PeerFiles

    clock = Clock()
    scans = []
    walk = {"seconds": 0.01}

    def timed_refresh(self):
        scans.append(clock.seconds())
        self.walked = walk["seconds"]
        return {}

    monkeypatch.setattr(ShareIndex, "refresh", timed_refresh)
    files = PeerFiles(clock=clock, run_blocking=maybeDeferred, find=None, me=lambda: None,
                      on_files_changed=lambda: None, shared=tmp_path, rescan_interval=2.0)
    files.startService()
    clock.pump([1.0] * 10)
    assert scans == [0, 2, 4, 6, 8, 10]  # a small share: every 2 s
    walk["seconds"] = 1.0  # the share grew: the scan at 12 s takes a second
    clock.pump([1.0] * 45)
    assert scans[6:] == [12, 32, 52]  # 19 s quiet after each such walk
    files.stopService()


def test_a_file_is_offered_only_once_it_has_stopped_changing_for_the_settle_time(tmp_path):
    import time

    later = [0.0]
    index = ShareIndex(tmp_path, settle=2.0, now=lambda: time.time() + later[0])
    (tmp_path / "copying.bin").write_bytes(b"first half")
    assert index.refresh() == {} and index.unsettled == {"copying.bin"}
    assert index.settles_in is not None and 0 < index.settles_in <= 2.0
    later[0] = 3.0  # three seconds on, nothing written since
    assert sorted(index.refresh()) == ["copying.bin"] and index.unsettled == frozenset()
    with open(tmp_path / "copying.bin", "ab") as f:
        f.write(b" and the rest")  # it changes again: withdrawn until it settles
    later[0] = 0.0
    assert index.refresh() == {} and index.unsettled == {"copying.bin"}
    later[0] = 3.0
    assert index.refresh()["copying.bin"].size == len(b"first half and the rest")


def test_a_file_that_changes_while_it_is_hashed_is_not_offered_until_it_settles(tmp_path, monkeypatch):
    import p2pshare.peer.share as share_module

    (tmp_path / "grow.bin").write_bytes(b"x" * 1000)
    real = share_module.hash_file

    def hash_while_written(path):
        digest = real(path)
        with open(path, "ab") as f:
            f.write(b"more")
        return digest

    monkeypatch.setattr(share_module, "hash_file", hash_while_written)
    index = ShareIndex(tmp_path)
    assert index.refresh() == {} and index.unsettled == {"grow.bin"}
    monkeypatch.setattr(share_module, "hash_file", real)
    assert index.refresh()["grow.bin"].size == 1004
