"""The web app: customer tracking page, ops board, Kuaidi100 push receiver.

create_app(config)                       # reads config.warehouse_url
create_app(config, engine=e, clock=f)    # tests: an engine and a fake clock
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from order_pipeline.contract.config import Config, ConfigError
from order_pipeline.web import hooks
from order_pipeline.web.context import WebContext, web_context
from order_pipeline.web.customer import lookup as customer_lookup
from order_pipeline.web.customer import page as customer
from order_pipeline.web.customer import short_links
from order_pipeline.web.db import make_engine
from order_pipeline.web.ops import auth as ops_auth
from order_pipeline.web.ops import board as ops_board
from order_pipeline.web.ops import orders as ops_orders
from order_pipeline.web.rendering.i18n import pick_lang
from order_pipeline.web.rendering.pages import Pages
from order_pipeline.web.security import revocations
from order_pipeline.web.security.headers import StrictTransportSecurity
from order_pipeline.web.settings import WebSettings

log = logging.getLogger(__name__)

# A backstop only: each form route refuses (and records) a body over its own, smaller cap. It must stay
# above them all, since Starlette replaces any answer to a request declaring more than this with its own.
MAX_BODY_BYTES = 2 * hooks.PUSH_BODY_BYTES


def warehouse_url(config: Config) -> str:
    """The warehouse URL; an unset `warehouse.url_env` variable stops the app here, named."""
    url = config.warehouse_url.resolve()
    if url is None:
        env = config.warehouse_url.env
        raise ConfigError(
            config.path,
            "warehouse.url_env",
            f"environment variable {env} is not set",
            f"export {env}=... before starting",
        )
    return url


def utc_now() -> datetime:
    return datetime.now(UTC)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/order/{order_no}", customer.order_page, methods=["GET"], name="order"),
    Route("/s/{code}", short_links.short_link, methods=["GET"], name="short_link"),
    Route("/track", customer_lookup.lookup_form, methods=["GET"], name="lookup_form"),
    Route("/track", customer_lookup.lookup, methods=["POST"], name="lookup"),
    Route("/hooks/kuaidi100", hooks.kuaidi100_push, methods=["POST"], name="kuaidi100_push"),
    Route("/ops", ops_board.ops_root, methods=["GET"]),
    Route("/ops/", ops_board.overview, methods=["GET"], name="ops_overview"),
    Route("/ops/login", ops_auth.login_form, methods=["GET"], name="ops_login_form"),
    Route("/ops/login", ops_auth.login, methods=["POST"], name="ops_login"),
    Route("/ops/logout", ops_auth.logout, methods=["POST"], name="ops_logout"),
    Route("/ops/search", ops_orders.search, methods=["GET"], name="ops_search"),
    Route("/ops/orders", ops_board.order_list, methods=["GET"], name="ops_orders"),
    Route("/ops/orders.csv", ops_board.export_csv, methods=["GET"], name="ops_export"),
    Route("/ops/order/{order_no}", ops_orders.order_view, methods=["GET"], name="ops_order"),
    Route("/ops/order/{order_no}/link", ops_orders.issue_link, methods=["POST"], name="ops_issue_link"),
    Route("/ops/order/{order_no}/resend", ops_orders.resend_link, methods=["POST"], name="ops_resend"),
    Route("/healthz", health, methods=["GET"], name="health"),
]


async def http_error(request: Request, exc: HTTPException) -> Response:
    """404, 405, 413 and the like, as a page in the visitor's language."""
    web = web_context(request)
    return web.pages.error(
        exc.status_code if exc.status_code in (400, 404, 405, 413) else 400,
        pick_lang(request.query_params.get("lang")),
        headers=getattr(exc, "headers", None),
    )


async def server_error(request: Request, exc: Exception) -> Response:
    """Any unhandled error: logged in full here, a plain page without details for the visitor."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return web_context(request).pages.error(500, pick_lang(request.query_params.get("lang")))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.web.access_log.close()  # the rows still queued reach the table before the server exits


def create_app(
    config: Config, *, engine: Engine | None = None, clock: Callable[[], datetime] | None = None
) -> Starlette:
    settings = WebSettings.from_config(config)
    web = WebContext(
        config=config,
        settings=settings,
        engine=engine if engine is not None else make_engine(warehouse_url(config)),
        clock=clock or utc_now,
        pages=Pages(),
        push_salt=config.carrier.push_salt.resolve(),
    )
    app = Starlette(
        routes=ROUTES,
        # Starlette calls each handler with the class it is registered for, but types every handler as
        # taking a plain Exception (Kludex/starlette#2403), so the HTTPException handler does not match.
        exception_handlers={HTTPException: http_error, Exception: server_error},  # pyright: ignore[reportArgumentType]
        max_body_size=MAX_BODY_BYTES,
        lifespan=lifespan,
        middleware=[Middleware(StrictTransportSecurity)] if settings.secure_cookies else [],
    )
    revocations.ensure_table(web.engine)
    app.state.web = web
    return app
