"""GET and POST /track: a customer without the message finds their order by its number and phone tail.

The form takes the order number and the last four digits of the recipient's mobile (the snapshot's
`customer_phone`). A match answers 303 to the order's page with a fresh signed link (`link_ttl`).

It must not tell anyone whether an order exists, nor anything of a phone number:
- an unknown order and a wrong tail get the same status (404) and the same bytes, after the same
  work: the snapshot is read either way, and the typed tail is compared with `hmac.compare_digest`,
  against a dummy that matches nothing when there is no order (or no phone);
- no answer repeats what was typed, so no digit is ever echoed;
- five wrong tails for one order number within 15 minutes, from any addresses, lock that number's
  lookups (`context.LOOKUP_LOCK`: 15 minutes, doubling up to 4 hours), unknown numbers alike; while
  locked even the right tail is refused (429), before the snapshot is read;
- each address may post `rate_limits.lookup` (20/1h) lookups.

Order of checks: readable form (400, 413, 415) -> per-address limit (429) -> CSRF token of the
form's own cookie (403) -> well-formed order number and tail (400, the form again) -> the order
number's lock (429) -> lookup (303 or 404). Every answer is audited (`tracking_access_log`, actor
`customer`); a lock is one `lookup_burst` row and, for an order that exists, one message to the team
(`lookup_alerts`), queued after the answer has gone so that it takes no longer.
"""

from __future__ import annotations

import hmac
import logging
import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from order_pipeline.domain.links import make_token
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.customer.lookup_alerts import queue_lookup_burst
from order_pipeline.web.customer.page import valid_order_no
from order_pipeline.web.db import reading
from order_pipeline.web.ops import queries
from order_pipeline.web.rendering.i18n import TEXT, pick_lang
from order_pipeline.web.rendering.pages import SECURITY_HEADERS
from order_pipeline.web.security.audit import client_ip, request_access
from order_pipeline.web.security.forms import FormError, read_form
from order_pipeline.web.security.ratelimit import client_key
from order_pipeline.web.security.sessions import lookup_csrf_token, new_nonce, tokens_match

log = logging.getLogger(__name__)

LOOKUP_COOKIE = "track_form"
COOKIE_PATH = "/track"
FORM_NONCE_TTL = timedelta(hours=2)
# Two short fields, a token and the language: anything near this is not the page's form.
LOOKUP_FORM_BYTES = 4 * 1024
TAIL_DIGITS = 4
# Compared with when there is nothing to compare with: same length as a tail, and no digit, so it matches nothing.
_DUMMY_TAIL = "\x00" * TAIL_DIGITS


def typed_order_no(value: str | None) -> str | None:
    """The order number as typed, without surrounding spaces; None when it cannot be one."""
    text = unicodedata.normalize("NFKC", value or "").strip()
    return text if valid_order_no(text) else None


def typed_tail(value: str | None) -> str | None:
    """Four ASCII digits from what was typed (full-width digits and spaces allowed); None otherwise."""
    text = "".join(unicodedata.normalize("NFKC", value or "").split())
    return text if len(text) == TAIL_DIGITS and text.isascii() and text.isdigit() else None


def phone_tail(phone: str | None) -> str | None:
    """The last four digits of a stored mobile, however written; None when it has fewer."""
    digits = [ch for ch in unicodedata.normalize("NFKC", phone or "") if ch.isascii() and ch.isdigit()]
    return "".join(digits[-TAIL_DIGITS:]) if len(digits) >= TAIL_DIGITS else None


def tail_matches(typed: str, phone: str | None) -> bool:
    """Whether `typed` (four digits) is the tail of `phone`; the same comparison whether or not there is one."""
    expected = phone_tail(phone)
    same = hmac.compare_digest((expected or _DUMMY_TAIL).encode("ascii"), typed.encode("ascii"))
    return same and expected is not None


def order_path(order_no: str, token: str, lang: str) -> str:
    """The order's page with a signed link, on this site."""
    params = {"t": token, "lang": "en"} if lang == "en" else {"t": token}
    return f"/order/{quote(order_no, safe='')}?{urlencode(params)}"


def _access(web: WebContext, request: Request, now: datetime, order_no: str | None, outcome: str) -> queries.Access:
    return request_access(request, web.settings.link_secret, now, order_no=order_no, actor="customer", outcome=outcome)


def _form_page(web: WebContext, lang: str, nonce: str, *, error: str = "", status: int = 200) -> Response:
    """The form; its answer depends only on the language, the error and the form's cookie, never on what was typed."""
    context = {
        "lang": lang,
        "t": TEXT[lang],
        "csrf": lookup_csrf_token(nonce, web.settings.session_secret),
        "error": error,
        "contact": TEXT[lang]["contact"].format(contact=web.settings.support_contact)
        if web.settings.support_contact
        else "",
    }
    response = web.pages.html("track.html", context, status=status)
    response.set_cookie(
        LOOKUP_COOKIE,
        nonce,
        max_age=int(FORM_NONCE_TTL.total_seconds()),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=web.settings.secure_cookies,
    )
    return response


def _limited(web: WebContext, request: Request, now: datetime, lang: str, by: str, wait: int) -> Response:
    """Over a per-address limit: one counted row a minute for the address."""
    access = _access(web, request, now, None, "rate_limited")
    web.access_log.count(access, key=("rate_limited", by, access.ip_hash))
    return web.pages.error(429, lang, headers={"Retry-After": str(wait)}, seconds=wait)


async def lookup_form(request: Request) -> Response:
    web = web_context(request)
    now = web.clock()
    lang = pick_lang(request.query_params.get("lang"))
    wait = web.ip_limiter.hit(client_key(client_ip(request)), now.timestamp())
    if wait:
        return _limited(web, request, now, lang, "ip", wait)
    web.access_log.add(_access(web, request, now, None, "lookup_form"))
    return _form_page(web, lang, request.cookies.get(LOOKUP_COOKIE) or new_nonce())


def _read_phone(web: WebContext, order_no: str) -> tuple[bool, str | None]:
    with reading(web.engine) as conn:
        return queries.order_phone(conn, order_no)


async def lookup(request: Request) -> Response:
    web = web_context(request)
    now = web.clock()
    try:
        form = await read_form(request, max_bytes=LOOKUP_FORM_BYTES, multipart=False)
    except FormError as e:
        log.warning("lookup form refused: %s", e)
        web.access_log.add(_access(web, request, now, None, "form_refused"))
        return web.pages.error(e.status, wording="form" if e.status == 400 else None)
    lang = pick_lang(form.get("lang"))
    text = TEXT[lang]
    wait = web.lookup_limiter.hit(client_key(client_ip(request)), now.timestamp())
    if wait:
        return _limited(web, request, now, lang, "lookup", wait)
    nonce = request.cookies.get(LOOKUP_COOKIE)
    if not nonce or not tokens_match(lookup_csrf_token(nonce, web.settings.session_secret), form.get("csrf")):
        web.access_log.add(_access(web, request, now, None, "csrf_refused"))
        return web.pages.error(403, lang, wording="csrf")
    order_no, tail = typed_order_no(form.get("order_no")), typed_tail(form.get("tail"))
    if order_no is None or tail is None:
        web.access_log.add(_access(web, request, now, order_no, "lookup_bad_input"))
        return _form_page(web, lang, nonce, error=text["lookup.bad_input"], status=400)
    locks = web.lookup_lockouts
    wait = locks.locked(order_no, now.timestamp())
    if wait:
        until = datetime.fromtimestamp(locks.lock_end(order_no), UTC)
        access = _access(web, request, now, order_no, "lookup_locked")
        web.access_log.count(access, until=until, key=("lookup_locked", order_no))
        return web.pages.error(429, lang, headers={"Retry-After": str(wait)}, seconds=wait)
    found, phone = await run_in_threadpool(_read_phone, web, order_no)
    if tail_matches(tail, phone):
        web.access_log.add(_access(web, request, now, order_no, "lookup_ok"))
        token = make_token(order_no, now + web.settings.link_ttl, web.settings.link_secret)
        return RedirectResponse(order_path(order_no, token, lang), status_code=303, headers=SECURITY_HEADERS)
    web.access_log.add(_access(web, request, now, order_no, "lookup_wrong_tail" if found else "lookup_unknown_order"))
    response = _form_page(web, lang, nonce, error=text["lookup.no_match"], status=404)
    if locks.failed(order_no, now.timestamp()):
        until = datetime.fromtimestamp(locks.lock_end(order_no), UTC)
        failures = locks.policy.failures
        log.warning("lookups of order %s locked until %s after %d wrong phone tails", order_no, until, failures)
        web.access_log.add(_access(web, request, now, order_no, "lookup_burst"))
        if found:
            response.background = BackgroundTask(
                queue_lookup_burst, web.engine, web.config, order_no, failures, until, now
            )
    return response
