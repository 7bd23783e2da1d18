"""
Docs that match the code: the module map's line counts in docs/design.rst
are what the modules have (``python docs/module_map.py`` rewrites them),
and every module it names exists.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def module_map():
    spec = importlib.util.spec_from_file_location("module_map", DOCS / "module_map.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_map_counts_the_lines_the_code_has():
    mm = module_map()
    text = mm.DESIGN.read_text("utf-8")
    rows = [mm.ROW.match(line) for line in text.splitlines()]
    named = [m for line, m in zip(text.splitlines(), rows, strict=True) if m and "module" not in line]
    assert len(named) > 30  # the table is there, and read
    for m in named:
        for module in mm.modules_of(m.group(1)):
            assert (mm.SRC / module).is_file(), f"the module map names {module}, which is gone"
    assert mm.generated(text) == text, "docs/design.rst: run python docs/module_map.py"
    # And every module is in it: a new one is placed, and said what it owns.
    mapped = {module for m in named for module in mm.modules_of(m.group(1))}
    modules = {str(p.relative_to(mm.SRC)) for p in mm.SRC.rglob("*.py") if p.name != "__init__.py"}
    assert modules <= mapped, f"the module map leaves out {sorted(modules - mapped)}"
