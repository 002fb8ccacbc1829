"""Staff search (order no, waybill no, phone), the full order view and its actions: a fresh customer
link to hand over, and a resend of the tracking link to the customer (`messages`)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from order_pipeline.domain.links import customer_link
from order_pipeline.domain.times import local_time
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.customer.page import valid_order_no
from order_pipeline.web.db import reading
from order_pipeline.web.ops import messages, queries
from order_pipeline.web.ops.auth import checked_form, staff_access, staff_only
from order_pipeline.web.ops.page import ops_context
from order_pipeline.web.ops.view import alert_rows, event_rows, list_rows, order_summary, parcel_rows, stage_blocks
from order_pipeline.web.security.sessions import Session

MAX_TERM = 64


def normalise_term(raw: str | None) -> str:
    """Trim the search box; phone numbers may be typed with spaces, dashes or a +86 country code."""
    term = (raw or "").strip()[:MAX_TERM]
    squeezed = term.replace(" ", "").replace("-", "")
    for prefix in ("+86", "0086"):
        if squeezed.startswith(prefix) and squeezed[len(prefix) :].isdigit() and len(squeezed) - len(prefix) == 11:
            squeezed = squeezed[len(prefix) :]
    return squeezed if squeezed.isdigit() and len(squeezed) in (4, 11) else term


def logged_term(term: str, hits: list[dict]) -> str | None:
    """What of a search goes into the access log: the term only when it is the number of an order found.

    Anything else typed into the box (a phone number or its tail, a name) may be personal
    data and is not stored; the row still records that a search was made and its hit count.
    """
    if queries.is_phone_term(term):
        return None
    return term if any(hit["order_no"] == term for hit in hits) else None


@staff_only
async def search(request: Request, session: Session) -> Response:
    web = web_context(request)
    term = normalise_term(request.query_params.get("q"))
    if not term:
        return RedirectResponse("/ops/", status_code=303)

    def load():
        with reading(web.engine) as conn:
            return queries.search(conn, term)

    hits = await run_in_threadpool(load)
    web.access_log.add(staff_access(web, request, session, logged_term(term, hits), f"search:{len(hits)}"))
    if len(hits) == 1 and not queries.is_phone_term(term):  # an order or waybill number: go straight there
        return RedirectResponse(f"/ops/order/{quote(hits[0]['order_no'], safe='')}", status_code=303)
    context = ops_context(
        web, session, "search", q=term, rows=list_rows(hits, web.clock(), web.tz), limit=queries.SEARCH_LIMIT
    )
    return web.pages.html("ops_search.html", context)


def _order_page(
    web: WebContext,
    request: Request,
    session: Session,
    order_no: str,
    link: str = "",
    *,
    outcome: str = "",
    notice: str = "",
    status: int = 200,
) -> Response:
    with reading(web.engine) as conn:
        order = queries.staff_order(conn, order_no)
        parcels = queries.order_parcels(conn, order_no) if order else []
        events = queries.carrier_events(conn, order_no) if order else []
        alerts = queries.order_alerts_for(conn, order_no) if order else []
        sent = queries.order_messages(conn, order_no) if order else None
    outcome = (outcome or ("link_issued" if link else "ok")) if order else "not_found"
    web.access_log.add(staff_access(web, request, session, order_no, outcome))
    if order is None:
        return web.pages.html(
            "ops_missing.html", ops_context(web, session, "order", q=order_no, order_no=order_no), status=404
        )
    now = web.clock()
    context = ops_context(
        web,
        session,
        "order",
        q="",
        order=order_summary(order, now, web.tz),
        stages=stage_blocks(order, web.tz),
        parcels=parcel_rows(parcels, web.tz),
        events=event_rows(events, web.tz),
        alerts=alert_rows(alerts, web.tz),
        link=link,
        link_expires=local_time(now + web.settings.link_ttl, web.tz) if link else "",
        has_ledger=sent is not None and web.settings.customer_messages,
        messages=messages.message_rows(sent or [], web.tz),
        cancelled=messages.is_cancelled(order),
        notice=notice,
        notice_ok=status < 400,
    )
    return web.pages.html("ops_order.html", context, status=status)


@staff_only
async def order_view(request: Request, session: Session) -> Response:
    web = web_context(request)
    order_no = request.path_params["order_no"]
    if not valid_order_no(order_no):
        return web.pages.error(400)
    notice = messages.NOTICES.get(request.query_params.get("notice") or "", "")
    return await run_in_threadpool(_order_page, web, request, session, order_no, notice=notice)


async def _order_action(request: Request, session: Session) -> tuple[WebContext, str] | Response:
    """A staff action's form checked (CSRF) and its order number well formed, or the refusal."""
    web = web_context(request)
    order_no = request.path_params["order_no"]
    if await checked_form(request, session) is None:
        return web.pages.error(403, wording="csrf")
    if not valid_order_no(order_no):
        return web.pages.error(400)
    return web, order_no


@staff_only
async def issue_link(request: Request, session: Session) -> Response:
    """A fresh customer link, e.g. for a customer on the phone whose link has expired."""
    checked = await _order_action(request, session)
    if isinstance(checked, Response):
        return checked
    web, order_no = checked
    link = customer_link(web.settings, order_no, web.clock())
    return await run_in_threadpool(_order_page, web, request, session, order_no, link)


def _resend(web: WebContext, request: Request, session: Session, order_no: str) -> Response:
    done = messages.queue_resend(
        web.engine, order_no, session.username, web.clock(), web.tz, enabled=web.settings.customer_messages
    )
    if done.outcome == "resend_queued":
        web.access_log.add(staff_access(web, request, session, order_no, done.outcome))
        return RedirectResponse(f"/ops/order/{quote(order_no, safe='')}?notice=resend_queued", status_code=303)
    # Refused (or no such order): the order page again, saying why, audited with the refusal.
    response = _order_page(
        web, request, session, order_no, outcome=done.outcome, notice=done.notice, status=done.status
    )
    if done.retry_after:
        response.headers["Retry-After"] = str(done.retry_after)
    return response


@staff_only
async def resend_link(request: Request, session: Session) -> Response:
    """Send the customer the tracking link again, e.g. after a message that failed or may not have gone out."""
    checked = await _order_action(request, session)
    if isinstance(checked, Response):
        return checked
    web, order_no = checked
    return await run_in_threadpool(_resend, web, request, session, order_no)
