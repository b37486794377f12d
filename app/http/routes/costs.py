"""Cost reports over HTTP: `GET /api/admin/costs` (admins: everyone's), `GET /api/me/costs`
(the caller's own), and the admins' cost page at `/admin/costs`.

    ?from=YYYY-MM-DD&to=YYYY-MM-DD   days in UTC, both included (default: the last 30 days)
    &group_by=day,model,agent,user,key,job
                                     any of these, comma-separated, in that nesting (default: day;
                                     key and job: the host app's jobs, app/jobs/);
                                     or `generation`: one row per generation (CSV only)
    &format=json|csv                 CSV: RFC 4180, a header row, streamed, a dated file name

The sums are the database's, exact (app/billing/reports.py); amounts are decimal strings.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.billing.reports import (
    GROUPS,
    LINE_ITEM_COLUMNS,
    LINE_ITEMS,
    MEASURES,
    ReportRange,
    line_items,
    report,
    report_with_totals,
)
from app.errors import ApiError
from app.http.admin import require_admin
from app.http.auth.identity import identify
from app.http.page_headers import page_headers
from app.http.routes.pages import STATIC_DIR
from app.http.state import app_state

DEFAULT_DAYS = 30
# The days a range may name: the report reads up to the end of `to` (the next day's midnight)
# and defaults `from` to 30 days before `to`, neither of which may leave Python's dates.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date.max - timedelta(days=1)
FORMATS = ("json", "csv")


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_query", message)


def _date_param(params: Any, name: str) -> date | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    try:
        # Exactly YYYY-MM-DD: fromisoformat would also take 20260101 and week dates.
        if len(value) != 10:
            raise ValueError
        day = date.fromisoformat(value)
    except ValueError:
        raise _invalid(f"`{name}` must be a date as YYYY-MM-DD") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise _invalid(f"`{name}` must be a day from {FIRST_DAY} to {LAST_DAY}")
    return day


def _group_by(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ("day",)
    names = [part.strip() for part in value.split(",") if part.strip()]
    if names == [LINE_ITEMS]:
        return (LINE_ITEMS,)
    unknown = [name for name in names if name not in GROUPS]
    if unknown or len(set(names)) != len(names):
        raise _invalid(
            f"`group_by` takes any of {', '.join(GROUPS)} once each, comma-separated, "
            f"or `{LINE_ITEMS}` alone"
        )
    return tuple(names)


def parse_range(request: Request, *, user_id: str | None) -> tuple[ReportRange, str]:
    params = request.query_params
    end = _date_param(params, "to") or datetime.now(UTC).date()
    start = _date_param(params, "from") or max(FIRST_DAY, end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise _invalid("`from` must not be after `to`")
    fmt = (params.get("format") or "json").strip()
    if fmt not in FORMATS:
        raise _invalid(f"`format` must be one of {', '.join(FORMATS)}")
    group_by = _group_by(params.get("group_by"))
    if group_by == (LINE_ITEMS,) and fmt != "csv":
        raise _invalid(f"`group_by={LINE_ITEMS}` (one row per generation) is CSV only")
    return ReportRange(start, end, group_by, user_id), fmt


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)  # RFC 4180: CRLF, quoted as needed
    return buffer.getvalue()


async def _csv_body(request: Request, range_: ReportRange) -> AsyncIterator[str]:
    database = app_state(request).database
    if range_.group_by == (LINE_ITEMS,):
        yield _csv_text([LINE_ITEM_COLUMNS])
        async for page in line_items(database, range_):
            yield _csv_text([[_cell(item[name]) for name in LINE_ITEM_COLUMNS] for item in page])
        return
    columns = (*range_.group_by, *MEASURES)
    yield _csv_text([columns])
    batch: list[list[Any]] = []
    async for row in report(database, range_):
        batch.append([_cell(row[name]) for name in columns])
        if len(batch) >= 500:
            yield _csv_text(batch)
            batch = []
    if batch:
        yield _csv_text(batch)


# A spreadsheet evaluates a cell starting with these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number, read as a number by every spreadsheet, never as a formula: what a
# negative amount is (`cache_saved_usd` after a cache write).
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")


def _cell(value: Any) -> Any:
    """A CSV cell. Text from users and from upstream (a `sub`, a model id, an error code) that
    a spreadsheet would run as a formula is prefixed with a single quote, as OWASP advises: it
    shows as text. Numbers are written as they are, a negative amount's decimal string too (what
    caching saved is negative after a cache write)."""
    if value is None:
        return ""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not PLAIN_NUMBER.match(value)
    ):
        return "'" + value
    return value


def _filename(range_: ReportRange, *, mine: bool) -> str:
    who = "my-costs" if mine else "costs"
    by = "-".join(range_.group_by) or "total"
    return f"streamchat-{who}-{range_.start.isoformat()}-to-{range_.end.isoformat()}-by-{by}.csv"


async def _answer(request: Request, range_: ReportRange, fmt: str, *, mine: bool) -> Response:
    if fmt == "csv":
        return StreamingResponse(
            _csv_body(request, range_),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{_filename(range_, mine=mine)}"',
                "Cache-Control": "no-store",
            },
        )
    rows, totals = await report_with_totals(app_state(request).database, range_)
    return JSONResponse(
        {
            "from": range_.start.isoformat(),
            "to": range_.end.isoformat(),
            "group_by": list(range_.group_by),
            "currency": "USD",
            "rows": rows,
            "totals": totals,
        },
        headers={"Cache-Control": "no-store"},
    )


async def admin_costs(request: Request) -> Response:
    """
    ---
    parameters: &report
      - {name: from, in: query, schema: {type: string, format: date}}
      - {name: to, in: query, schema: {type: string, format: date}}
      - {name: group_by, in: query, schema: {type: string}}
      - {name: format, in: query, schema: {type: string, enum: [json, csv]}}
    responses:
      200:
        description: the cost report
        content:
          application/json: {schema: {type: object}}
          text/csv: {schema: {type: string}}
      403: forbidden admin_disabled
      422: invalid_query
    """
    await require_admin(request)
    range_, fmt = parse_range(request, user_id=None)
    return await _answer(request, range_, fmt, mine=False)


async def my_costs(request: Request) -> Response:
    """
    ---
    parameters:
      - {name: from, in: query, schema: {type: string, format: date}}
      - {name: to, in: query, schema: {type: string, format: date}}
      - {name: group_by, in: query, schema: {type: string}}
      - {name: format, in: query, schema: {type: string, enum: [json, csv]}}
    responses:
      200:
        description: the cost report of the caller's own generations
        content:
          application/json: {schema: {type: object}}
          text/csv: {schema: {type: string}}
      422: invalid_query
    """
    user_id = (await identify(request)).user_id
    range_, fmt = parse_range(request, user_id=user_id)
    return await _answer(request, range_, fmt, mine=True)


async def costs_page(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the admins' cost page
        content: {text/html: {schema: {type: string}}}
    """
    # The page itself is public and holds no data: it asks for the admin token and sends it
    # with each API call, as a script would.
    headers = {"Cache-Control": "no-cache", **page_headers(app_state(request).settings)}
    return FileResponse(STATIC_DIR / "costs.html", headers=headers)


routes = [
    Route("/api/admin/costs", admin_costs, methods=["GET"]),
    Route("/api/me/costs", my_costs, methods=["GET"]),
    Route("/admin/costs", costs_page, methods=["GET"]),
]
