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
        ["--port", "mtls:0:privateKey=/nonexistent.pem"],  # no trustRoots
        ["--port", "mtls:0:privateKey=/nonexistent.pem:trustRoots=/nonexistent"],
        ["--port", "mtls:0:colour=blue:trustRoots=/nonexistent"],
        ["--port", "mtls:http:trustRoots=/nonexistent"],
    ],
)
def test_peer_options_refuse_bad_values(argv):
    with pytest.raises(usage.UsageError):
        PeerOptions().parseOptions(argv)


def test_a_short_secret_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "s").write_text("tiny\n")
    with pytest.raises(usage.UsageError, match="at least 16 bytes"):
        MetaOptions().parseOptions(["--secret-file", str(tmp_path / "s")])


def test_mtls_is_an_endpoint_like_any_other(tmp_path, reactor):
    """
    The mutual-TLS listening syntax is an endpoint-parser plugin: Twisted's
    own serverFromString (what twistd and every user of endpoints call)
    reads it, and the earlier ssl:...:trustRoots= spelling means the same.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    from p2pshare.tls import TLSServerParser, make_certs, peer_tls, server_endpoint

    assert any(isinstance(p, TLSServerParser) for p in getPlugins(IStreamServerEndpointStringParser))
    make_certs(tmp_path, ["s1"], ["127.0.0.1"])
    description = f"mtls:0:interface=127.0.0.1:privateKey={tmp_path / 's1.pem'}:trustRoots={tmp_path / 'trust'}"
    ep = serverFromString(reactor, description)
    assert type(ep).__name__ == "TLSServerEndpoint"
    assert ep.inner._port == 0 and ep.inner._interface == "127.0.0.1"
    tls = peer_tls(description)
    assert tls is not None and len(tls.authorities) == 1
    old = server_endpoint(reactor, "ssl" + description[len("mtls"):])
    assert type(old) is type(ep)
    with pytest.raises(ValueError, match="needs trustRoots=DIR"):
        serverFromString(reactor, "mtls:0")


def test_meta_auto_is_the_mdns_endpoint_and_its_fields_are_checked():
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.task import Clock

    from p2pshare.lan import MDNSClientEndpoint, endpoint_interface

    o = PeerOptions()
    o.parseOptions(["--meta", "auto"])
    assert o["meta"] == "mdns:"
    ep = clientFromString(Clock(), o["meta"])
    assert isinstance(ep, MDNSClientEndpoint) and (ep.timeout, ep.name) == (3.0, None)
    ep = clientFromString(Clock(), "mdns:timeout=0.5:name=p2pmeta on lab")
    assert (ep.timeout, ep.name) == (0.5, "p2pmeta on lab")
    for bad in ("mdns:somewhere", "mdns:timeout=soon", "mdns:timeout=0", "mdns:port=5000"):
        with pytest.raises(ValueError):
            clientFromString(Clock(), bad)
    assert endpoint_interface("tcp:5000:interface=10.0.0.1") == "10.0.0.1"
    assert endpoint_interface("tcp:5000") is None


def test_announce_needs_a_tcp_port():
    o = MetaOptions()
    o.parseOptions(["--announce"])
    assert o["announce"]
    with pytest.raises(usage.UsageError, match="--announce needs a TCP --port"):
        MetaOptions().parseOptions(["--announce", "--port", "unix:/tmp/meta.sock"])
    with pytest.raises(usage.UsageError, match="on loopback"):
        MetaOptions().parseOptions(["--announce", "--port", "tcp:5000:interface=127.0.0.1"])
