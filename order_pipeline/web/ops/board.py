"""The ops board overview, the filtered order list and its CSV export."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from order_pipeline.domain.times import local_time, parse_instant
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries
from order_pipeline.web.ops.auth import staff_access, staff_only
from order_pipeline.web.ops.export import csv_chunks
from order_pipeline.web.ops.page import ops_context
from order_pipeline.web.ops.view import (
    OPEN_STAGES,
    alert_rows,
    freshness_rows,
    list_rows,
    oldest_by_role,
    role_label,
    stage_bars,
    stage_label,
)
from order_pipeline.web.rendering.i18n import ALL_STAGES
from order_pipeline.web.rendering.pages import SECURITY_HEADERS
from order_pipeline.web.security.sessions import Session

OVERVIEW_TTL_SECONDS = 30  # counting a million snapshot rows is not done on every refresh
_ROLE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_OFFSET_AS_SPACE = re.compile(r" (\d\d:?\d\d)$")  # "+08:00" typed into a URL unencoded arrives as " 08:00"


def _overview_data(web: WebContext, now: datetime) -> dict:
    with reading(web.engine) as conn:
        return {
            "stage_counts": queries.stage_counts(conn),
            "alert_counts": queries.open_alert_counts(conn),
            "recent_alerts": queries.recent_open_alerts(conn),
            "waiting": queries.oldest_waiting(conn, OPEN_STAGES, per_stage=20),
            "watermarks": queries.watermarks(conn),
            "as_of": now,
        }


def _cached_overview(web: WebContext) -> dict:
    now = web.clock()
    hit = web.cache.get("overview")
    if hit and now.timestamp() - hit[0] < OVERVIEW_TTL_SECONDS:
        return hit[1]
    data = _overview_data(web, now)
    web.cache["overview"] = (now.timestamp(), data)
    return data


@dataclass(frozen=True)
class _Filters:
    stage: str | None = None
    role: str | None = None
    # Orders that reached a stage in (since, until]: the link of a status digest (alerts.digests).
    changed_since: str | None = None  # as given (an ISO time; a naive one is business time)
    changed_until: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def changed(self) -> queries.Changed:
        return (self.since, self.until) if self.since or self.until else None

    def query(self) -> str:
        """The filters as a query string, for the CSV export and its audit row."""
        params = {
            k: v
            for k, v in (
                ("stage", self.stage),
                ("role", self.role),
                ("changed_since", self.changed_since),
                ("changed_until", self.changed_until),
            )
            if v
        }
        return urlencode(params, safe=":", quote_via=quote)


def _filters(request: Request, tz: str) -> _Filters:
    """The stage, role and changed filters; unknown values are ignored rather than passed to SQL."""
    stage = request.query_params.get("stage") or None
    role = request.query_params.get("role") or None
    if stage not in ALL_STAGES:
        stage = None
    if role is not None and not _ROLE.fullmatch(role):
        role = None
    times: dict[str, tuple[str, datetime] | None] = {}
    for name in ("changed_since", "changed_until"):
        text = _OFFSET_AS_SPACE.sub(r"+\1", (request.query_params.get(name) or "").strip()[:64])
        try:
            times[name] = (text, parse_instant(text, tz)) if text else None
        except (ValueError, OverflowError):
            times[name] = None
    since, until = times["changed_since"], times["changed_until"]
    return _Filters(
        stage,
        role,
        since[0] if since else None,
        until[0] if until else None,
        since[1] if since else None,
        until[1] if until else None,
    )


def _changed_label(f: _Filters, tz: str) -> str:
    if not f.changed:
        return ""
    since = local_time(f.since, tz, "%m-%d %H:%M") if f.since else "…"
    until = local_time(f.until, tz, "%m-%d %H:%M") if f.until else "现在"
    return f"{since} 至 {until} 有阶段变化"


@staff_only
async def overview(request: Request, session: Session) -> Response:
    web = web_context(request)
    data = await run_in_threadpool(_cached_overview, web)
    now = web.clock()
    web.access_log.add(staff_access(web, request, session, None, "overview"))
    total = sum(data["stage_counts"].values())
    context = ops_context(
        web,
        session,
        "overview",
        total=total,
        bars=stage_bars(data["stage_counts"]),
        alert_counts=data["alert_counts"],
        open_alerts=sum(r["open"] for r in data["alert_counts"]),
        recent_alerts=alert_rows(data["recent_alerts"], web.tz),
        roles=oldest_by_role(data["waiting"], now, web.tz),
        freshness=freshness_rows(data["watermarks"], now, web.tz),
        as_of=local_time(data["as_of"], web.tz, "%H:%M:%S"),
    )
    return web.pages.html("ops_overview.html", context)


@staff_only
async def order_list(request: Request, session: Session) -> Response:
    web = web_context(request)
    f = _filters(request, web.tz)
    stage, role = f.stage, f.role

    def load():
        with reading(web.engine) as conn:
            return queries.list_orders(conn, stage, role, f.changed)

    rows = await run_in_threadpool(load)
    web.access_log.add(staff_access(web, request, session, None, "list"))
    query = f.query()
    context = ops_context(
        web,
        session,
        "list",
        rows=list_rows(rows, web.clock(), web.tz),
        limit=queries.LIST_LIMIT,
        stage=stage or "",
        role=role or "",
        stage_label=stage_label(stage) if stage else "全部阶段",
        role_label=role_label(role) if role else "全部负责人",
        changed_label=_changed_label(f, web.tz),
        changed_since=f.changed_since or "",
        changed_until=f.changed_until or "",
        stages=[{"code": s, "label": stage_label(s)} for s in ALL_STAGES],
        export_url="/ops/orders.csv" + (f"?{query}" if query else ""),
    )
    return web.pages.html("ops_list.html", context)


@staff_only
async def export_csv(request: Request, session: Session) -> Response:
    web = web_context(request)
    f = _filters(request, web.tz)
    stage, role = f.stage, f.role
    # Unlike a page view, a bulk export does not go ahead unless its audit row is written.
    access = staff_access(web, request, session, None, f"export:{f.query() or 'all'}")
    await run_in_threadpool(web.access_log.write_now, access)
    header = [c.name for c in queries.EXPORT_COLUMNS]
    batches = queries.export_batches(web.engine, stage, role, changed=f.changed)
    name = "orders" + "".join(f"-{v}" for v in (stage, role) if v) + f"-{web.clock().strftime('%Y%m%d-%H%M')}.csv"
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(csv_chunks(header, batches, web.tz), media_type="text/csv; charset=utf-8", headers=headers)


async def ops_root(request: Request) -> Response:
    return RedirectResponse("/ops/", status_code=307)
