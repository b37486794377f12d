"""docs/api.md's table of error codes is the list the code raises, both ways, statuses included.

Read from the source, not from a run: every `ApiError(status, code, …)` and
`error_response(status, code, …)` call in `app/`. A code must be spelled out there: a string,
a name of a module-level dict of strings (`TOO_LONG[field]`), or `.code` passed on from an
`ApiError` that was itself spelled out. Anything else fails here, so a code cannot hide from
the table.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAISERS = {"ApiError", "error_response"}


def _string_dicts(tree: ast.Module) -> dict[str, list[str]]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            values = node.value.values
            if values and all(
                isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = [v.value for v in values]
    return found


# Subclasses of ApiError that fix the status and take the code first: name -> status.
FIXED_STATUS = {"Unauthorized": 401}


def _raised(node: ast.Call, api_error_subclass: bool) -> tuple[ast.expr, ast.expr, bool] | None:
    """(status, code, whether the code may be a pass-through parameter) of a call that raises."""
    func = node.func
    name = getattr(func, "id", None)
    if name in RAISERS:
        return node.args[0], node.args[1], False
    if name in FIXED_STATUS:
        return ast.Constant(FIXED_STATUS[name]), node.args[0], False
    # `super().__init__(status, code, …)` in a subclass of ApiError.
    if api_error_subclass and isinstance(func, ast.Attribute) and func.attr == "__init__":
        return node.args[0], node.args[1], True
    return None


def codes_in_source() -> dict[str, set[int | None]]:
    """code -> the statuses it is raised with (None: a status computed at run time)."""
    codes: dict[str, set[int | None]] = defaultdict(set)
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        dicts = _string_dicts(tree)
        subclass_bodies = {
            id(inner)
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef)
            and any(getattr(base, "id", None) in ("ApiError", *FIXED_STATUS) for base in cls.bases)
            for inner in ast.walk(cls)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            raised = _raised(node, id(node) in subclass_bodies)
            if raised is None:
                continue
            status_arg, code_arg, pass_through = raised
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            status = status_arg.value if isinstance(status_arg, ast.Constant) else None
            if isinstance(code_arg, ast.Constant) and isinstance(code_arg.value, str):
                codes[code_arg.value].add(status)
            elif (
                isinstance(code_arg, ast.Subscript)
                and isinstance(code_arg.value, ast.Name)
                and code_arg.value.id in dicts
            ):
                for code in dicts[code_arg.value.id]:
                    codes[code].add(status)
            elif pass_through and isinstance(code_arg, ast.Name):
                continue  # the subclass passes its caller's code on: counted at those calls
            elif not (isinstance(code_arg, ast.Attribute) and code_arg.attr == "code"):
                raise AssertionError(f"{where}: spell the error code out (see this test's doc)")
    return codes


def documented_codes() -> dict[str, str]:
    """code -> its status cell, from the table under docs/api.md's "Error codes" heading."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]*) \|", section, flags=re.MULTILINE)
    assert rows, "no table of error codes in docs/api.md"
    return {code: status.strip() for code, status in rows}


def test_every_code_raised_is_in_the_docs_and_every_code_listed_is_raised():
    source, documented = codes_in_source(), documented_codes()
    assert sorted(set(source) - set(documented)) == [], "raised, missing from docs/api.md's table"
    assert sorted(set(documented) - set(source)) == [], "in docs/api.md's table, raised nowhere"


def test_the_docs_give_each_code_the_statuses_it_is_raised_with():
    source, documented = codes_in_source(), documented_codes()
    for code, statuses in source.items():
        listed = {int(s) for s in re.findall(r"\b[1-5]\d\d\b", documented[code])}
        assert listed == {s for s in statuses if s is not None}, (code, documented[code])
        if None in statuses:  # a status decided at run time: the cell says so in words
            assert re.search(r"[a-z]", documented[code]), (code, documented[code])
