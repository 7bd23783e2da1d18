"""
One unit system for sizes and rates, wherever they are shown: powers of
1024 (KiB, MiB, GiB, TiB ...), as C{--upload-rate 8M} reads them, and
C{B} for bytes.  The topology page's script writes them by the same rule
(tests/test_browser.py runs it against these).
"""

from __future__ import annotations

import pytest

from p2pshare.disk import human_size
from p2pshare.options import parse_rate

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40

BOUNDARIES = [
    (0, "0 B"),
    (1, "1 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (1280, "1.3 KiB"),  # 1.25 exactly: half up, as the page's toFixed rounds
    (MIB - 1, "1.0 MiB"),  # never "1024.0 KiB"
    (MIB, "1.0 MiB"),
    (8 * MIB, "8.0 MiB"),
    (GIB - 1, "1.0 GiB"),
    (3 * GIB // 2, "1.5 GiB"),
    (TIB, "1.0 TiB"),
    (2**60, "1.0 EiB"),
    (2**64, "16.0 EiB"),
    (2**80, "1048576.0 EiB"),  # beyond the last unit: the number grows
]


@pytest.mark.parametrize("size, text", BOUNDARIES)
def test_sizes_are_shown_in_powers_of_1024(size, text):
    assert human_size(size) == text


def test_a_rate_cap_shows_as_it_was_given():
    # --upload-rate 8M is 8 MiB/s, and is shown so (it was "8.4 MB/s").
    assert human_size(parse_rate("8M")) == "8.0 MiB"
    assert human_size(parse_rate("512K")) == "512.0 KiB"
    assert human_size(parse_rate("1G")) == "1.0 GiB"


def test_fractions_of_a_byte_round_to_whole_bytes():
    # A rate is a quotient: bytes are whole, and 1023.5 is already a KiB.
    assert [human_size(n) for n in (0.4, 0.5, 1023.4, 1023.5)] == [
        "0 B", "1 B", "1023 B", "1.0 KiB"]


def test_no_decimal_unit_is_ever_shown():
    for n in [0, 999, 1000, 10**6, 10**9, 10**12, *(2**k - 1 for k in range(1, 64))]:
        text = human_size(n)
        number, unit = text.split(" ")
        assert unit in {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}, text
        assert float(number) < 1024, text
