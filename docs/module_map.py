"""
Rewrite the line counts of the module map in docs/design.rst from the
code (``python docs/module_map.py``); tests/test_docs.py fails when they
differ, so the map is generated, never typed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.rst"
SRC = ROOT / "src" / "p2pshare"
ROW = re.compile(r"^((?:``[^`]+``(?:, )?)+)(\s+)(\d+)(  .*)$")


def modules_of(cell: str) -> list[str]:
    """
    The modules a row names (``peer/control.py``, ``tap.py``: the second
    in the first one's folder).
    """
    names = re.findall(r"``([^`]+)``", cell)
    folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0] else ""
    return [n if "/" in n or not folder else folder + n for n in names]


def lines_of(module: str) -> int:
    with open(SRC / module, encoding="utf-8") as f:
        return sum(1 for _ in f)


def generated(text: str) -> str:
    """
    C{text} with each row's count made what the code has now.
    """
    width = len(re.search(r"^``wire.py``\s+\d+", text, re.M).group(0))  # type: ignore[union-attr]
    out = []
    for line in text.splitlines(keepends=True):
        m = ROW.match(line.rstrip("\n"))
        if m is None or "module" in line:
            out.append(line)
            continue
        head, count = m.group(1), str(sum(map(lines_of, modules_of(m.group(1)))))
        out.append(head + " " * (width - len(head) - len(count)) + count + m.group(4) + "\n")
    return "".join(out)


if __name__ == "__main__":
    text = DESIGN.read_text("utf-8")
    new = generated(text)
    if new != text:
        DESIGN.write_text(new, "utf-8")
        print(f"rewrote the module map in {DESIGN}")
    sys.exit(0)
