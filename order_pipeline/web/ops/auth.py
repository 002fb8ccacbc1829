"""Staff login, logout, the session check and CSRF-checked forms.

A login is refused (429) when its address is over the login rate limit, or when its user name
is locked after repeated wrong passwords (`security.lockout`); a lock is one `login_burst` row
in the access log and one message to the data team (`login_alerts`), and the refusals during it
are one counted `login_locked:N` row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from order_pipeline.domain.passwords import dummy_hash, verify_password
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.ops import queries
from order_pipeline.web.ops.login_alerts import queue_login_burst
from order_pipeline.web.security import revocations
from order_pipeline.web.security.audit import client_ip, request_access
from order_pipeline.web.security.forms import FormError, read_form
from order_pipeline.web.security.ratelimit import client_key
from order_pipeline.web.security.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    csrf_token,
    login_csrf_token,
    new_nonce,
    password_mark,
    read_session,
    sign_session,
    tokens_match,
)

log = logging.getLogger(__name__)

COOKIE_PATH = "/ops"
LOGIN_NONCE_TTL = timedelta(hours=2)
# The staff forms are a few short urlencoded fields; anything near this is not a browser's form.
STAFF_FORM_BYTES = 64 * 1024

StaffEndpoint = Callable[[Request, Session], Awaitable[Response]]


async def staff_session(request: Request) -> Session | None:
    """The request's staff session; None when there is none, or it has expired, been logged out,
    or belongs to a user since removed from the config or given a new password."""
    web = web_context(request)
    secret = web.settings.session_secret
    session = read_session(request.cookies.get(SESSION_COOKIE), secret, web.clock())
    if session is None:
        return None
    user = web.settings.staff_user(session.username)
    if user is None or not tokens_match(password_mark(user.password_hash, secret), session.password):
        return None
    if await run_in_threadpool(revocations.is_revoked, web.engine, session):
        return None
    return session


def safe_next(target: str | None) -> str:
    """Only a path on the ops board itself may be the place to return to after logging in."""
    if target and target.startswith("/ops") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ops/"


def staff_only(endpoint: StaffEndpoint) -> Callable[[Request], Awaitable[Response]]:
    """Run `endpoint` with the staff session, or send the visitor to the login page."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        session = await staff_session(request)
        if session is None:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ops/login?{urlencode({'next': back})}", status_code=303)
        return await endpoint(request, session)

    return guarded


async def checked_form(request: Request, session: Session) -> dict[str, str] | None:
    """The posted form, or None when its CSRF token does not belong to this session."""
    web = web_context(request)
    try:
        form = await read_form(request, max_bytes=STAFF_FORM_BYTES, multipart=False)
    except FormError as e:
        log.warning("staff form from %s refused: %s", session.username, e)
        return None
    return form if tokens_match(csrf_token(session, web.settings.session_secret), form.get("csrf")) else None


def staff_access(
    web: WebContext, request: Request, session: Session, order_no: str | None, outcome: str
) -> queries.Access:
    return request_access(
        request, web.settings.link_secret, web.clock(), order_no=order_no, actor=session.username, outcome=outcome
    )


def _set_cookie(web: WebContext, response: Response, name: str, value: str, max_age: timedelta) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(max_age.total_seconds()),
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=web.settings.secure_cookies,
    )


def _login_page(web: WebContext, nonce: str, next_url: str, error: str = "", status: int = 200) -> Response:
    context = {
        "csrf": login_csrf_token(nonce, web.settings.session_secret),
        "next": next_url,
        "error": error,
        "no_staff": not web.settings.staff,
    }
    response = web.pages.html("ops_login.html", context, status=status)
    _set_cookie(web, response, LOGIN_COOKIE, nonce, LOGIN_NONCE_TTL)
    return response


async def login_form(request: Request) -> Response:
    web = web_context(request)
    next_url = safe_next(request.query_params.get("next"))
    if await staff_session(request) is not None:
        return RedirectResponse(next_url, status_code=303)
    return _login_page(web, request.cookies.get(LOGIN_COOKIE) or new_nonce(), next_url)


def _login_access(web: WebContext, request: Request, username: str | None, outcome: str) -> queries.Access:
    """A login or logout in the access log: who it was (or claimed to be), never what password it tried."""
    return request_access(
        request, web.settings.link_secret, web.clock(), order_no=None, actor=username or "", outcome=outcome
    )


def _audit_login(web: WebContext, request: Request, username: str | None, outcome: str) -> None:
    web.access_log.add(_login_access(web, request, username, outcome))


def _refuse_locked(web: WebContext, request: Request, username: str, wait: int) -> Response:
    """A login of a locked name: counted into the lock's one row, answered with the time left."""
    until = datetime.fromtimestamp(web.lockouts.lock_end(username), UTC)
    access = _login_access(web, request, username, "login_locked")
    web.access_log.count(access, until=until, key=("login_locked", access.actor))
    return web.pages.error(429, headers={"Retry-After": str(wait)}, seconds=wait)


async def _failed(web: WebContext, request: Request, username: str, known: bool) -> None:
    """A wrong password: audited; when it locks the name, the lock is audited and (for staff) alerted once."""
    now = web.clock()
    _audit_login(web, request, username, "login_failed")
    if not web.lockouts.failed(username, now.timestamp()):
        return
    until = datetime.fromtimestamp(web.lockouts.lock_end(username), UTC)
    failures = web.lockouts.policy.failures
    log.warning("staff login %r locked until %s after %d wrong passwords", username[:64], until.isoformat(), failures)
    _audit_login(web, request, username, "login_burst")
    if known:  # an invented name has no owner to tell; its burst is in the access log
        await run_in_threadpool(queue_login_burst, web.engine, web.config, username, failures, until, now)


async def login(request: Request) -> Response:
    web = web_context(request)
    ip = client_ip(request)
    try:
        form = await read_form(request, max_bytes=STAFF_FORM_BYTES, multipart=False)
    except FormError as e:
        log.warning("login form refused: %s", e)  # the address only goes to the audit row, hashed
        _audit_login(web, request, None, "form_refused")
        return web.pages.error(e.status, wording="form" if e.status == 400 else None)
    username, password = form.get("username", "").strip(), form.get("password", "")
    wait = web.login_limiter.hit(client_key(ip), web.clock().timestamp())
    if wait:
        log.warning("login attempts from one address over the limit; retry in %ss", wait)
        access = _login_access(web, request, username, "rate_limited")
        web.access_log.count(access, key=("rate_limited", "login", access.ip_hash))  # whatever names it typed
        return web.pages.error(429, headers={"Retry-After": str(wait)}, seconds=wait)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not tokens_match(login_csrf_token(nonce, web.settings.session_secret), form.get("csrf")):
        log.warning("login form without a valid CSRF token refused")
        _audit_login(web, request, username, "csrf_refused")
        return web.pages.error(403, wording="csrf")
    wait = web.lockouts.locked(username, web.clock().timestamp())
    if wait:
        log.warning("login for locked name %r refused; retry in %ss", username[:64], wait)
        return _refuse_locked(web, request, username, wait)
    next_url = safe_next(form.get("next"))
    user = web.settings.staff_user(username)
    stored = user.password_hash if user else dummy_hash()
    ok = await run_in_threadpool(verify_password, password, stored)
    if not (ok and user):
        log.warning("failed staff login for %r", username[:64])
        await _failed(web, request, username, known=user is not None)
        return _login_page(web, nonce, next_url, error="用户名或密码错误。", status=401)
    web.lockouts.succeeded(username)
    expires = int((web.clock() + web.settings.session_ttl).timestamp())
    session = Session(
        user.username, expires, new_nonce(), password_mark(user.password_hash, web.settings.session_secret)
    )
    response = RedirectResponse(next_url, status_code=303)
    _set_cookie(
        web, response, SESSION_COOKIE, sign_session(session, web.settings.session_secret), web.settings.session_ttl
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    _audit_login(web, request, user.username, "login")
    log.info("staff login: %s", user.username)
    return response


@staff_only
async def logout(request: Request, session: Session) -> Response:
    web = web_context(request)
    if await checked_form(request, session) is None:
        return web.pages.error(403, wording="csrf")
    await run_in_threadpool(revocations.revoke, web.engine, session, web.clock())  # a copy of the cookie ends too
    response = RedirectResponse("/ops/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    _audit_login(web, request, session.username, "logout")
    log.info("staff logout: %s", session.username)
    return response
