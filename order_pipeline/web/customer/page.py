"""GET /order/{order_no}?t=TOKEN: the customer's tracking page.

Order of checks, so that a refusal never tells whether an order exists:
per-IP rate limit (429) -> order number format (400) -> link signature, and an
expiry no further away than the link TTL (403) -> link expiry (410) -> per-order
rate limit (429) -> lookup (404) -> page.
The per-order limit counts only genuine links, so nobody can lock a customer
out of their own page by hammering it with bad tokens.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from order_pipeline.domain.links import TokenCheck, verify_token
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.customer.view import customer_view
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries
from order_pipeline.web.rendering.i18n import pick_lang
from order_pipeline.web.security.audit import client_ip, request_access
from order_pipeline.web.security.ratelimit import client_key

ORDER_NO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def valid_order_no(order_no: str) -> bool:
    return bool(ORDER_NO.fullmatch(order_no))


def lang_switch_url(order_no: str, token: str, lang: str) -> str:
    params = {"t": token} if lang == "en" else {"t": token, "lang": "en"}
    return f"/order/{order_no}?{urlencode(params)}"


class _Visit:
    """One customer request and its audit row."""

    def __init__(self, web: WebContext, request: Request):
        self.web, self.request = web, request
        self.now = web.clock()
        self.ip = client_ip(request)
        self.order_no = request.path_params["order_no"]
        self.token = request.query_params.get("t", "")
        self.lang = pick_lang(request.query_params.get("lang"))

    def access(self, outcome: str) -> queries.Access:
        return request_access(
            self.request,
            self.web.settings.link_secret,
            self.now,
            order_no=self.order_no,
            actor="customer",
            outcome=outcome,
        )

    def record(self, outcome: str) -> None:
        self.web.access_log.add(self.access(outcome))

    def refuse(self, status: int, outcome: str, headers: dict | None = None, **values) -> Response:
        self.record(outcome)
        return self._error(status, headers, **values)

    def limited(self, by: str, wait: int) -> Response:
        """Over the per-IP or per-order limit: a flood is one row a minute for its address or order, with a count."""
        access = self.access("rate_limited")
        self.web.access_log.count(access, key=("rate_limited", by, access.ip_hash if by == "ip" else access.order_no))
        return self._error(429, {"Retry-After": str(wait)}, seconds=wait)

    def _error(self, status: int, headers: dict | None = None, **values) -> Response:
        return self.web.pages.error(
            status, self.lang, headers=headers, contact=self.web.settings.support_contact, **values
        )

    def load(self) -> tuple[dict | None, list[dict], list[dict]]:
        """Read the order in a read-only transaction, which never waits for a publish in progress."""
        with reading(self.web.engine) as conn:
            return queries.customer_order(conn, self.order_no)


async def order_page(request: Request) -> Response:
    web = web_context(request)
    visit = _Visit(web, request)
    try:
        wait = web.ip_limiter.hit(client_key(visit.ip), visit.now.timestamp())
        if wait:
            return visit.limited("ip", wait)
        if not valid_order_no(visit.order_no):
            return visit.refuse(400, "bad_request")
        check = verify_token(
            visit.order_no, visit.token, web.settings.link_secret, visit.now, max_ttl=web.settings.link_ttl
        )
        if check is TokenCheck.INVALID:
            return visit.refuse(403, "forbidden")
        if check is TokenCheck.EXPIRED:
            return visit.refuse(410, "expired", lookup=True, days=web.settings.link_ttl.days or 1)
        wait = web.order_limiter.hit(visit.order_no, visit.now.timestamp())
        if wait:
            return visit.limited("order", wait)
        order, parcels, events = await run_in_threadpool(visit.load)
    except Exception:
        visit.record("error")
        raise
    visit.record("ok" if order else "not_found")
    if order is None:
        return web.pages.error(404, visit.lang, contact=web.settings.support_contact, wording="order_missing")
    view = customer_view(
        order,
        parcels,
        events,
        lang=visit.lang,
        tz=web.tz,
        fields=web.config.tracking_page.public_fields,
        support_contact=web.settings.support_contact,
        lang_switch_url=lang_switch_url(visit.order_no, visit.token, visit.lang),
    )
    return web.pages.html("customer.html", view)
