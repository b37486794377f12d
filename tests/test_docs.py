"""What the docs show runs, and what they name exists: drift between them and the code fails here.

- The `curl` examples of the README and docs/api.md run, as written, against one development
  server (SQLite or PostgreSQL, the simulator, `AUTH_MODE=dev`), through the real `curl`: only
  the base URL is changed, and the placeholders `M` and `C` (the message and conversation ids a
  previous example answered with) are filled in.
- docs/api.md's table of endpoints lists every route of the OpenAPI document, and no other.
- Every settings table in the docs names settings that exist, with their real defaults.
- `.env.example` lists every setting and no other, shows each default as the default, and a
  `.env` copied from it starts the server; `app.json` sets only settings that exist.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from app.http.openapi import document
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS_WITH_CURL = ("README.md", "docs/api.md")
EXAMPLE_HOST = "localhost:8000"
SETTINGS = {name.upper(): name for name in Settings.model_fields}


@pytest.fixture
def no_settings_in_the_environment(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


# --- the curl examples -----------------------------------------------------------------------


def curl_commands(path: str) -> list[str]:
    """Each `curl` command of the file's ```sh blocks, continuation lines joined, in order."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", (ROOT / path).read_text(), re.S | re.M):
        for command in re.sub(r"\\\n\s*", "", block).splitlines():
            if command.startswith("curl "):
                commands.append(command)
    return commands


def test_the_docs_have_curl_examples_to_run():
    for path in DOCS_WITH_CURL:
        assert curl_commands(path), f"no curl example found in {path}"


def _ids_in(body: str) -> dict[str, str]:
    """The message and conversation ids an answer names: a JSON body, or a stream's `meta`."""
    for text in [body, *re.findall(r"^data: (.*)$", body, re.M)]:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and {"message_id", "conversation_id"} <= value.keys():
            return {"M": value["message_id"], "C": value["conversation_id"]}
    return {}


def test_the_curl_examples_run_as_written(start_server, tmp_path):
    server = start_server(app_env="development", openrouter_api_key=None, auth_mode="dev")
    base = server.url.removeprefix("http://")
    ids: dict[str, str] = {}
    failures = []
    for path in DOCS_WITH_CURL:
        for command in curl_commands(path):
            args = shlex.split(command, comments=True)
            for name, value in ids.items():  # a placeholder is a whole path segment
                args = [re.sub(rf"/{name}(?=[/?]|$)", f"/{value}", arg) for arg in args]
            args = [arg.replace(EXAMPLE_HOST, base) for arg in args]
            assert any(base in arg for arg in args), f"{path}: {command} calls no server"
            body = tmp_path / "body"
            body.unlink(missing_ok=True)
            own_limit = "--max-time" in args
            extra = ["-o", str(body), "-w", "%{http_code}", "--no-progress-meter"]
            if not own_limit:
                extra += ["--max-time", "30"]
            run = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=60)
            status = int(run.stdout.strip() or 0)
            # curl's 28 is its --max-time: a stream the example leaves on purpose, as Ctrl-C.
            ended = run.returncode == 0 or (own_limit and run.returncode == 28)
            if not (ended and 200 <= status < 300):
                failures.append(f"{path}: {command} -> curl {run.returncode}, HTTP {status}")
            ids |= _ids_in(body.read_text() if body.exists() else "")
    assert failures == []


# --- the settings tables ---------------------------------------------------------------------


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text`: its rows (the header first), each a list of cells."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip() for cell in cells])
        elif rows:
            tables.append([row for row in rows if not re.fullmatch(r"[\s|:-]+", "|".join(row))])
            rows = []
    return tables


def settings_tables() -> list[tuple[str, list[list[str]]]]:
    """The docs' tables of settings: those whose first column is headed setting or variable."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for table in _tables(path.read_text()):
            if table[0][0].lower() in {"setting", "variable"}:
                found.append((str(path.relative_to(ROOT)), table))
    return found


def _shown(value: object) -> str:
    """A default as the docs write it: `30` for 30.0, `a,b` for a tuple, `unset` for None."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | Decimal) and value == int(value):
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def test_the_docs_have_settings_tables():
    assert {path for path, _ in settings_tables()} >= {"docs/deploy.md", "docs/budgets.md"}


@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_every_setting_in_a_docs_table_exists_with_the_default_it_gives():
    defaults = Settings(_env_file=None)
    for path, table in settings_tables():
        has_default = table[0][1].lower() == "default"
        for row in table[1:]:
            names = re.findall(r"`([A-Z][A-Z0-9_]*)`", row[0])
            assert names, f"{path}: a settings row naming no setting: {row[0]}"
            for name in names:
                assert name in SETTINGS, f"{path}: {name} is no setting (app/settings.py)"
            written = re.findall(r"`([^`]*)`", row[1]) if has_default else []
            if row[1] in {"unset", "—"}:
                written = ["unset"] * len(names)
            if len(written) == len(names):  # else the cell says it in words
                for name, text in zip(names, written, strict=True):
                    actual = _shown(getattr(defaults, SETTINGS[name]))
                    assert text == actual, f"{path}: {name}'s default is {actual}, not {text}"


# --- .env.example and app.json ---------------------------------------------------------------


def _env_example() -> dict[str, str]:
    """Each setting .env.example names -> the value it shows ('' when commented out)."""
    text = (ROOT / ".env.example").read_text()
    shown = {}
    for commented, name, value in re.findall(r"^(# ?)?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M):
        shown.setdefault(name, "" if commented else value)
    return shown


def test_env_example_lists_every_setting_and_no_other():
    listed = set(_env_example())
    assert sorted(set(SETTINGS) - listed) == [], "settings missing from .env.example"
    assert sorted(listed - set(SETTINGS)) == [], "in .env.example, no such setting"


@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_a_dotenv_copied_from_the_example_is_the_defaults_plus_the_suggestions(tmp_path):
    # Read as a `.env` is: quoting included (a bare 'self' would be read as self).
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    from_example = Settings(_env_file=tmp_path / ".env")
    defaults = Settings(_env_file=None)
    for name, field in SETTINGS.items():
        if Settings.model_fields[field].default is None:
            continue  # unset by default: the example may suggest a value (OPENROUTER_MODEL)
        assert getattr(from_example, field) == getattr(defaults, field), name


def test_app_json_sets_only_settings_that_exist():
    app_json = json.loads((ROOT / "app.json").read_text())
    assert sorted(set(app_json["env"]) - set(SETTINGS)) == []


# --- the endpoint table against the OpenAPI document -----------------------------------------


def _route(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)  # the docs name ids as they read best


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of each route docs/api.md's "Endpoints" table lists in its first column:
    `GET /a`, `GET`/`PUT /a`, `POST /a`, `POST /b` (a query after the path is left out)."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Endpoints", 1)[1].split("\n#", 1)[0]
    routes = set()
    for cell in re.findall(r"^\| (.*?) \|", section, re.M):
        for methods, path in re.findall(r"((?:`[A-Z]+`/)*`[A-Z]+) (/[^`\s\[?]*)", cell):
            routes |= {(method, _route(path)) for method in re.findall(r"[A-Z]+", methods)}
    return routes


def test_the_endpoint_table_lists_every_route_of_the_openapi_document(make_settings):
    paths = document(create_app(make_settings()).routes)["paths"]
    served = {(method.upper(), _route(path)) for path, ops in paths.items() for method in ops}
    listed = documented_routes()
    assert sorted(served - listed) == [], "routes missing from docs/api.md's Endpoints table"
    assert sorted(listed - served) == [], "in docs/api.md's Endpoints table, served nowhere"
