"""
What a person is shown of a name from the network: every character that
would not show as itself (controls, bidi and other format characters,
surrogates, private use, unassigned, line and paragraph separators) and
the backslash become visible escapes; everything else stays as it is.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.display import HIDDEN, json_text, shown


@pytest.mark.parametrize("char, escape", [
    # Cc: C0, DEL and C1 controls
    ("\x00", "\\x00"), ("\x07", "\\x07"), ("\t", "\\x09"), ("\n", "\\x0a"), ("\r", "\\x0d"),
    ("\x1b", "\\x1b"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9f", "\\x9f"),
    # Cf: every bidi control, the zero-width ones, the soft hyphen, the BOM, a tag
    ("\u202a", "\\u202a"), ("\u202b", "\\u202b"), ("\u202c", "\\u202c"),
    ("\u202d", "\\u202d"), ("\u202e", "\\u202e"),
    ("\u2066", "\\u2066"), ("\u2067", "\\u2067"), ("\u2068", "\\u2068"), ("\u2069", "\\u2069"),
    ("\u200e", "\\u200e"), ("\u200f", "\\u200f"), ("\u061c", "\\u061c"),
    ("\u200b", "\\u200b"), ("\u200d", "\\u200d"), ("\u2060", "\\u2060"), ("\u00ad", "\\xad"),
    ("\ufeff", "\\ufeff"), ("\U000e0001", "\\U000e0001"),
    # Cs: lone surrogates (what surrogateescape makes of undecodable bytes)
    ("\ud800", "\\ud800"), ("\udc80", "\\udc80"),
    # Co: private use, in the BMP and beyond
    ("\ue000", "\\ue000"), ("\U000f0000", "\\U000f0000"),
    # Cn: unassigned and noncharacters
    ("\u0378", "\\u0378"), ("\uffff", "\\uffff"), ("\U0010ffff", "\\U0010ffff"),
    # Zl, Zp
    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    # and the backslash, so that an escape is never a name's own text
    ("\\", "\\\\"),
])
def test_each_hidden_character_becomes_a_visible_escape(char, escape):
    assert char == "\\" or unicodedata.category(char) in HIDDEN
    assert shown(f"a{char}b") == f"a{escape}b"
    assert shown(char * 2) == escape * 2


def test_a_reversed_extension_cannot_pass_for_another():
    assert shown("evil\u202egpj.exe") == "evil\\u202egpj.exe"
    assert shown("photo\u2066\u2067.jpg\u2069\u200f.exe") == "photo\\u2066\\u2067.jpg\\u2069\\u200f.exe"
    # A name spelt with a backslash is shown apart from one holding the control.
    assert shown("evil\\u202egpj.exe") == "evil\\\\u202egpj.exe"
    assert shown("evil\\u202egpj.exe") != shown("evil\u202egpj.exe")


@pytest.mark.parametrize("name", [
    "report.pdf", "Live Set/set.ogg", "été & co.ogg", "Ünïcödé ñ ø ß", "東京/音楽.mp3",
    "한국어 파일.txt", "العربية.txt", "עברית.txt", "😀 party 🎉.jpg", "flag 🇫🇷.png",
    "e\u0301 combining", "no\u00a0break", "ideographic\u3000space", "thin\u2009space",
    "<b>bold</b> & \"quotes\" 'too'", "", " ", "~!@#$%^&*()_+{}|:<>?`-=[];',./",
])
def test_ordinary_names_are_untouched(name):
    assert shown(name) == name


@given(st.text())
def test_nothing_hidden_survives_and_the_rest_is_kept(name):
    out = shown(name)
    assert not any(unicodedata.category(c) in HIDDEN for c in out)
    kept = [c for c in name if c != "\\" and unicodedata.category(c) not in HIDDEN]
    assert [c for c in out if ord(c) > 0x7f] == [c for c in kept if ord(c) > 0x7f]
    # The escapes read back to the name: nothing is lost or ambiguous.
    assert out.encode("latin-1", "backslashreplace").decode("unicode_escape") == name


@given(st.recursive(st.text() | st.integers(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=8))
def test_json_output_is_exact_for_programs_and_hides_nothing_from_people(value):
    text = json_text(value)
    assert json.loads(text) == value
    assert not any(unicodedata.category(c) in HIDDEN for c in text)
    assert "\n" not in text


def test_json_output_keeps_readable_text_readable():
    assert json_text({"name": "été/東京 😀.ogg"}) == '{"name": "été/東京 😀.ogg"}'
    assert json_text({"name": "evil\u202egpj.exe"}) == '{"name": "evil\\u202egpj.exe"}'
    assert json_text(["\U000e0001", "\x85", "a\\b"]) == '["\\udb40\\udc01", "\\u0085", "a\\\\b"]'
