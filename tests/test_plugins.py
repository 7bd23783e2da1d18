"""
The twistd plugins and their options, as plain data.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from p2pshare.meta.tap import Options as MetaOptions
from p2pshare.peer.tap import Options as PeerOptions


def test_both_plugins_are_found():
    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert {"p2pmeta", "p2ppeer"} <= names


def test_twistd_help_lists_both_from_another_directory(tmp_path):
    # Run from an empty directory, so that only the installed dropin counts.
    out = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "p2pmeta" in out and "p2ppeer" in out


def test_meta_options_defaults_and_values():
    o = MetaOptions()
    o.parseOptions([])
    assert (o["port"], o["data-dir"], o["expect"], o["reset"], o["portfile"]) == (
        "tcp:5000", "./p2pmeta-data", 5, False, None,
    )
    o = MetaOptions()
    o.parseOptions(["--port", "7000", "--expect", "8", "--reset", "--portfile", "p"])
    assert (o["port"], o["expect"], o["reset"], o["portfile"]) == ("tcp:7000", 8, True, "p")
    with pytest.raises(usage.UsageError):
        MetaOptions().parseOptions(["--expect", "0"])


def test_peer_options_defaults_and_values(tmp_path):
    o = PeerOptions()
    o.parseOptions([])
    assert o["port"] == "tcp:5001"
    assert o["meta"] == "tcp:127.0.0.1:5000"
    assert o["max-neighbours"] == 2
    assert o["max-uploads"] == 16
    assert o["secret"] is None and o["tls"] is None  # an open, plain network
    assert o["name"] is None and o["advertise"] is None
    assert o["control"].startswith("unix:") and o["control"].endswith("p2ppeer-data/control.sock:mode=600")
    o = PeerOptions()
    o.parseOptions([
        "--port", "0", "--meta", "5999", "--name", "alice@home", "--max-neighbours", "4",
        "--data-dir", str(tmp_path), "--control", "tcp:7777:interface=127.0.0.1",
        "--advertise", "10.0.0.5",
    ])
    assert (o["port"], o["meta"], o["name"], o["max-neighbours"], o["control"], o["advertise"]) == (
        "tcp:0", "tcp:127.0.0.1:5999", "alice@home", 4, "tcp:7777:interface=127.0.0.1", "10.0.0.5",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", "no spaces"],
        ["--name", "x" * 65],
        ["--name", "../etc"],
        ["--max-neighbours", "0"],
        ["--max-neighbours", "two"],
        ["--advertise", "a b"],
        ["--max-uploads", "0"],
        ["--secret-file", "/nonexistent/secret"],
        ["--port", "ssl:0:privateKey=/nonexistent.pem"],  # no trustRoots
        ["--port", "ssl:0:privateKey=/nonexistent.pem:trustRoots=/nonexistent"],
    ],
)
def test_peer_options_refuse_bad_values(argv):
    with pytest.raises(usage.UsageError):
        PeerOptions().parseOptions(argv)


def test_a_short_secret_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "s").write_text("tiny\n")
    with pytest.raises(usage.UsageError, match="at least 16 bytes"):
        MetaOptions().parseOptions(["--secret-file", str(tmp_path / "s")])
