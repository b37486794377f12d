"""The import graph keeps its floors (scripts/imports.py draws it): no import back up a floor,
no cycle between modules or packages, `bench/` included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "imports.py"


def _drawing():
    spec = importlib.util.spec_from_file_location("imports_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module, module.draw()


def test_no_import_goes_back_up_a_floor() -> None:
    _, drawing = _drawing()
    assert drawing.upward == []


def test_no_cycles() -> None:
    _, drawing = _drawing()
    assert drawing.module_cycles == []
    assert drawing.unit_cycles == []


def test_the_script_sees_an_upward_import_and_a_cycle() -> None:
    # The checks above pass on an empty graph too: prove the script finds what it looks for.
    module, _ = _drawing()
    assert module.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert module.unit_of("app.core.money") < module.unit_of("app.replies.runs")
    assert module.unit_of("bench.run")[0] == len(module.FLOORS) - 1
