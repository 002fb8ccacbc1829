"""What every ops board page has: the user, the search box, the logout form's CSRF token."""

from __future__ import annotations

from order_pipeline.web.context import WebContext
from order_pipeline.web.security.sessions import Session, csrf_token


def ops_context(web: WebContext, session: Session, active: str, q: str = "", **values) -> dict:
    return {
        "user": session.username,
        "csrf": csrf_token(session, web.settings.session_secret),
        "active": active,
        "q": q,
        **values,
    }
