"""GET /s/{code}: the short link an SMS carries, since a signed URL does not fit an SMS variable.

The sender stores each code with the order and the expiry of the link it stands for
(`tracking_short_links`); a known code that has not expired answers 303 to that order's signed
page, valid until the same moment, so a short link never outlives the link it replaces.

Order of checks: per-IP rate limit (429, the bucket of `/order/`) -> lookup -> expiry (410, with
the lookup form) -> redirect. An unknown code and a malformed one (anything but ten letters and
digits) get the same 404, after the same work: a malformed code is looked up too, as one that
matches nothing, so the answer's time says nothing about which codes exist. Audited like the
order page (actor `customer`, outcome ok, expired or not_found); the code itself is not logged.
"""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from order_pipeline.domain.links import make_token
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.customer.lookup import order_path
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries
from order_pipeline.web.rendering.i18n import pick_lang
from order_pipeline.web.rendering.pages import SECURITY_HEADERS
from order_pipeline.web.security.audit import client_ip, request_access
from order_pipeline.web.security.ratelimit import client_key

CODE = re.compile(r"[A-Za-z0-9]{10}")
# What a malformed code is looked up as: no code is empty, so it matches nothing.
_NO_CODE = ""


def lookup_key(code: str) -> str:
    return code if CODE.fullmatch(code) else _NO_CODE


def _read(web: WebContext, key: str) -> dict | None:
    with reading(web.engine) as conn:
        return queries.short_link(conn, key)


async def short_link(request: Request) -> Response:
    web = web_context(request)
    now = web.clock()
    lang = pick_lang(request.query_params.get("lang"))
    contact = web.settings.support_contact

    def audit(order_no: str | None, outcome: str) -> queries.Access:
        return request_access(
            request, web.settings.link_secret, now, order_no=order_no, actor="customer", outcome=outcome
        )

    wait = web.ip_limiter.hit(client_key(client_ip(request)), now.timestamp())
    if wait:
        access = audit(None, "rate_limited")
        web.access_log.count(access, key=("rate_limited", "ip", access.ip_hash))
        return web.pages.error(429, lang, headers={"Retry-After": str(wait)}, contact=contact, seconds=wait)
    try:
        link = await run_in_threadpool(_read, web, lookup_key(request.path_params["code"]))
    except Exception:
        web.access_log.add(audit(None, "error"))
        raise
    if link is None:
        web.access_log.add(audit(None, "not_found"))
        return web.pages.error(404, lang, contact=contact, lookup=True)
    order_no, expires_at = link["order_no"], link["expires_at"]
    # The token carries whole seconds: the code expires when the link it stands for does.
    if now.timestamp() >= int(expires_at.timestamp()):
        web.access_log.add(audit(order_no, "expired"))
        return web.pages.error(410, lang, contact=contact, lookup=True, days=web.settings.link_ttl.days or 1)
    web.access_log.add(audit(order_no, "ok"))
    token = make_token(order_no, expires_at, web.settings.link_secret)
    target = web.settings.base_url.rstrip("/") + order_path(order_no, token, lang)
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
