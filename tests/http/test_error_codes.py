"""The README's table of error codes is the list the code raises, both ways, statuses included.

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


def codes_in_source() -> dict[str, set[int | None]]:
    """code -> the statuses it is raised with (None: a status computed at run time)."""
    codes: dict[str, set[int | None]] = defaultdict(set)
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        dicts = _string_dicts(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in RAISERS):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            status_arg, code_arg = node.args[:2]
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
            elif not (isinstance(code_arg, ast.Attribute) and code_arg.attr == "code"):
                raise AssertionError(f"{where}: spell the error code out (see this test's doc)")
    return codes


def codes_in_readme() -> dict[str, str]:
    """code -> its status cell, from the table under the README's "Error codes" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]*) \|", section, flags=re.MULTILINE)
    assert rows, "no table of error codes in the README"
    return {code: status.strip() for code, status in rows}


def test_every_code_raised_is_in_the_readme_and_every_code_listed_is_raised():
    source, readme = codes_in_source(), codes_in_readme()
    assert sorted(set(source) - set(readme)) == [], "raised, missing from the README's table"
    assert sorted(set(readme) - set(source)) == [], "in the README's table, raised nowhere"


def test_the_readme_gives_each_code_the_statuses_it_is_raised_with():
    source, readme = codes_in_source(), codes_in_readme()
    for code, statuses in source.items():
        listed = {int(s) for s in re.findall(r"\b[1-5]\d\d\b", readme[code])}
        assert listed == {s for s in statuses if s is not None}, (code, readme[code])
        if None in statuses:  # a status decided at run time: the cell says so in words
            assert re.search(r"[a-z]", readme[code]), (code, readme[code])
