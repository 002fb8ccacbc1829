"""A deterministic stand-in for Kuaidi100's POST poll/query.do and POST poll, backed by a SQLite file.

It checks the forms the way the real service does (customer, sign, key, the phone rule of
顺丰/丰网/中通) and answers in the real shapes, so the demo and the tests exercise the
real client and protocol without network access or an account. The data comes from
tables that the demo generator fills:

- `carrier_waybills`: one row per waybill with its Kuaidi100 `state` and `ischeck`;
- `carrier_events`: its tracking events, `time` in China local wall-clock time;
- `carrier_estimates` (optional): the carrier's predicted arrival, answered with resultv2=8.

Subscriptions are kept beside them (`sandbox_subscriptions`, `sandbox_subscribe_counts`), and
`push_updates` delivers what a subscribed waybill's tables say now as signed pushes, the way
Kuaidi100 calls a callback URL: news as `polling`, the signature as `shutdown`, three days
without a record (or sixty without news) as `abort`. A number subscribed under the wrong carrier
code that the stand-in knows under another is corrected as Kuaidi100 does: an `abort` with
`comNew`, then the pushes of the corrected subscription with `autoCheck` 1."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from order_pipeline.carrier.sandbox.query import NO_RECORD, PHONE_MISMATCH, QUERY_PATH, answer, create_schema
from order_pipeline.carrier.sandbox.subscriptions import (
    SUBSCRIPTION_SCHEMA,
    Pushed,
    http_deliver,
    push_updates,
    subscribe,
)

# What the stand-in offers, wherever in the package it is written.
__all__ = [
    "NO_RECORD",
    "PHONE_MISMATCH",
    "QUERY_PATH",
    "SUBSCRIBE_PATH",
    "SUBSCRIPTION_SCHEMA",
    "Pushed",
    "answer",
    "app",
    "create_schema",
    "handler",
    "http_deliver",
    "push_updates",
    "subscribe",
]

SUBSCRIBE_PATH = "/poll"


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def handler(
    db_path: str | Path, customer: str, key: str, clock: Clock = _utc_now
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler for `httpx.MockTransport` that speaks the query and subscribe protocols in-process."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return httpx.Response(404)
        form = _parse_form(request.content)
        if request.url.path == QUERY_PATH:
            return httpx.Response(200, json=answer(db_path, form, customer, key))
        if request.url.path == SUBSCRIBE_PATH:
            return httpx.Response(200, json=subscribe(db_path, form, key, clock()))
        return httpx.Response(404)

    return handle


def app(db_path: str | Path, customer: str, key: str, clock: Clock = _utc_now) -> Starlette:
    """The sandbox as a web app, for serving on loopback."""

    async def query(request: Request) -> JSONResponse:
        form = _parse_form(await request.body())
        # sqlite3 blocks: keep it off the event loop.
        return JSONResponse(await run_in_threadpool(answer, db_path, form, customer, key))

    async def subscribe_route(request: Request) -> JSONResponse:
        form = _parse_form(await request.body())
        return JSONResponse(await run_in_threadpool(subscribe, db_path, form, key, clock()))

    return Starlette(
        routes=[
            Route(QUERY_PATH, query, methods=["POST"]),
            Route(SUBSCRIBE_PATH, subscribe_route, methods=["POST"]),
        ]
    )


def _parse_form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
