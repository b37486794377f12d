"""`GET /openapi.json` (app/http/openapi.py): every route is in it, with docs/api.md's error codes,
and a property-based tester (schemathesis) that reads it finds no 5xx and no answer the document
does not describe, against a real server, on both databases."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from starlette.routing import Mount, Route

from app.http.openapi import document
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "an-admin-token-for-the-tester-" + "x" * 16
# Codes the document cannot list per route: any status the framework raises, and a bug.
UNDOCUMENTED = {"http_error", "internal_error"}


def documented_codes() -> dict[str, set[int]]:
    """docs/api.md's error table: code -> its statuses."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    codes: dict[str, set[int]] = {}
    for code, status in re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", table, re.MULTILINE):
        codes[code] = {int(s) for s in re.findall(r"\d{3}", status)}
    return codes


def test_every_route_of_the_app_is_in_the_document(make_settings) -> None:
    app = create_app(make_settings())
    served = set()
    for route in app.routes:
        if isinstance(route, Mount):
            assert route.path == "/static", route.path  # the page's files, not an API
            continue
        assert isinstance(route, Route), route
        # The document names a path parameter without its converter: `{model_id:path}` is
        # `{model_id}` there (OpenAPI has no converters).
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        served |= {(path, method.lower()) for method in route.methods if method != "HEAD"}
    paths = document(app.routes)["paths"]
    described = {(path, method) for path, operations in paths.items() for method in operations}
    assert served == described
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation["summary"], (method, path)
            assert any(s.startswith("2") for s in operation["responses"]), (method, path)


def test_the_document_has_every_error_code_of_the_docs_with_its_status(make_settings) -> None:
    paths = document(create_app(make_settings()).routes)["paths"]
    listed: dict[str, set[int]] = {}
    for operations in paths.values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                for code in response.get("x-error-codes", []):
                    listed.setdefault(code, set()).add(int(status))
    documented = documented_codes()
    assert set(listed) == set(documented) - UNDOCUMENTED
    for code, statuses in listed.items():
        assert statuses <= documented[code], code


def _shapes(response: dict) -> set[str]:
    """The error shapes (`components` names) a response's schema allows."""
    schema = response["content"]["application/json"]["schema"]
    options = schema.get("anyOf", [schema])
    return {(o["allOf"][0] if "allOf" in o else o)["$ref"].rsplit("/", 1)[1] for o in options}


def test_openai_s_api_answers_its_errors_in_openai_s_shape(make_settings) -> None:
    built = document(create_app(make_settings()).routes)
    openai_error = built["components"]["schemas"]["OpenAIError"]["properties"]["error"]
    assert set(openai_error["required"]) == {"message", "type", "code", "param"}
    completions = built["paths"]["/v1/chat/completions"]["post"]["responses"]
    # A service key's refusal, not a user's: a JWT or the admin token is refused so.
    assert completions["401"]["x-error-codes"] == ["invalid_api_key"]
    assert _shapes(completions["401"]) == _shapes(completions["400"]) == {"OpenAIError"}
    # Raised around the handler (the middleware, the router, the database's handler): ours.
    assert _shapes(completions["413"]) == {"Error", "OpenAIError"}
    assert _shapes(completions["405"]) == {"Error"}
    assert _shapes(completions["503"]) == {"Error", "OpenAIError"}
    # OpenRouter's refusals keep its code: any string, at any 5xx.
    assert completions["5XX"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }
    model = built["paths"]["/v1/models/{model_id}"]["get"]
    assert model["parameters"][0]["name"] == "model_id"
    assert "pattern" not in model["parameters"][0]["schema"]  # `openai/gpt-4o`, not a hex id
    assert model["responses"]["404"]["x-error-codes"] == ["model_not_found"]
    assert _shapes(built["paths"]["/api/admin/keys"]["post"]["responses"]["401"]) == {"Error"}


def test_the_served_document_is_openapi_3_1(client) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    body = answer.json()
    assert body["openapi"] == "3.1.0"
    assert "/openapi.json" in body["paths"]


def test_a_property_based_tester_finds_no_5xx_and_nothing_undocumented(
    start_server, tmp_path
) -> None:
    # What the tester sends, and in which order, is the same each run (--generation-
    # deterministic), and bounded (--max-examples per operation): tens of seconds per database.
    # It runs in `tmp_path`: the failures it remembers (.schemathesis/, .hypothesis/) would
    # otherwise be replayed by the next run, which would no longer be the same.
    server = start_server(admin_token=ADMIN_TOKEN)
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json"),
            *("--header", f"Authorization: Bearer {ADMIN_TOKEN}"),
            *("--checks", ",".join(checks)),
            *("--max-examples", "5", "--generation-deterministic"),
            *("--workers", "1", "--request-timeout", "10", "--no-color"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,  # below pytest-timeout's 300 s: the command's own limit reports first
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
