"""Staff search (order no, waybill no, phone) and the full order view."""

from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import queries
from .context import WebContext, web_context
from .customer import valid_order_no
from .links import customer_link
from .ops_auth import checked_form, staff_access, staff_only
from .ops_page import ops_context
from .ops_view import alert_rows, event_rows, list_rows, order_summary, parcel_rows, stage_blocks
from .sessions import Session
from .timefmt import local_time

MAX_TERM = 64


def normalise_term(raw: str | None) -> str:
    """Trim the search box; phone numbers may be typed with spaces or dashes."""
    term = (raw or "").strip()[:MAX_TERM]
    squeezed = term.replace(" ", "").replace("-", "")
    return squeezed if squeezed.isdigit() and len(squeezed) in (4, 11) else term


@staff_only
async def search(request: Request, session: Session) -> Response:
    web = web_context(request)
    term = normalise_term(request.query_params.get("q"))
    if not term:
        return RedirectResponse("/ops/", status_code=303)

    def load():
        with web.engine.begin() as conn:
            hits = queries.search(conn, term)
            queries.record_access(conn, staff_access(web, request, session, term, f"search:{len(hits)}"))
        return hits

    hits = await run_in_threadpool(load)
    if len(hits) == 1 and not queries.is_phone_term(term):  # an order or waybill number: go straight there
        return RedirectResponse(f"/ops/order/{quote(hits[0]['order_no'], safe='')}", status_code=303)
    context = ops_context(web, session, "search", q=term, rows=list_rows(hits, web.clock(), web.tz),
                          limit=queries.SEARCH_LIMIT)
    return web.pages.html("ops_search.html", context)


def _order_page(web: WebContext, request: Request, session: Session, order_no: str, link: str = "") -> Response:
    with web.engine.begin() as conn:
        order = queries.staff_order(conn, order_no)
        parcels = queries.order_parcels(conn, order_no) if order else []
        events = queries.carrier_events(conn, order_no) if order else []
        alerts = queries.order_alerts_for(conn, order_no) if order else []
        outcome = ("link_issued" if link else "ok") if order else "not_found"
        queries.record_access(conn, staff_access(web, request, session, order_no, outcome))
    if order is None:
        return web.pages.html("ops_missing.html", ops_context(web, session, "order", q=order_no, order_no=order_no),
                              status=404)
    now = web.clock()
    context = ops_context(web, session, "order", q="",
                          order=order_summary(order, now, web.tz), stages=stage_blocks(order, web.tz),
                          parcels=parcel_rows(parcels, web.tz), events=event_rows(events, web.tz),
                          alerts=alert_rows(alerts, web.tz), link=link,
                          link_expires=local_time(now + web.settings.link_ttl, web.tz) if link else "")
    return web.pages.html("ops_order.html", context)


@staff_only
async def order_view(request: Request, session: Session) -> Response:
    web = web_context(request)
    order_no = request.path_params["order_no"]
    if not valid_order_no(order_no):
        return web.pages.error(400)
    return await run_in_threadpool(_order_page, web, request, session, order_no)


@staff_only
async def issue_link(request: Request, session: Session) -> Response:
    """A fresh customer link, e.g. for a customer on the phone whose link has expired."""
    web = web_context(request)
    order_no = request.path_params["order_no"]
    if await checked_form(request, session) is None:
        return web.pages.error(403, wording="csrf")
    if not valid_order_no(order_no):
        return web.pages.error(400)
    link = customer_link(web.settings, order_no, web.clock())
    return await run_in_threadpool(_order_page, web, request, session, order_no, link)
