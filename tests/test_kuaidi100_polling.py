"""Polling Kuaidi100 for the due waybills: which are due, storing answers as they come, stopping when it is down."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import dagster as dg
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import CUSTOMER, KEY, NOW, D, H, Sleeps, add_rows, answer_payload, materialization_metadata

from assets.carrier import carrier_tracking_asset
from order_pipeline.carrier.polling import poll_due
from order_pipeline.carrier.store import due_waybills
from order_pipeline.contract.schema import carrier_subscriptions, raw_tracking
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, WarehouseResource


def an_order(order_no: str) -> dict:
    return {
        "order_no": order_no,
        "customer_name": "张三",
        "customer_phone": "13800000000",
        "ship_address": "上海",
        "amount": 10.0,
        "ordered_at": NOW - D,
        "status": "open",
        "updated_at": NOW - D,
    }


def a_shipment(order_no: str, waybill_no: str, hours_ago: float = 5) -> dict:
    return {
        "order_no": order_no,
        "waybill_no": waybill_no,
        "carrier_code": "yuantong",
        "shipped_at": NOW - hours_ago * H,
        "updated_at": NOW - hours_ago * H,
    }


def test_a_parcel_of_an_order_the_erp_does_not_have_is_not_polled(engine):
    add_rows(engine, "orders", [an_order("SO-1")])
    add_rows(engine, "shipments", [a_shipment("SO-1", "YT1"), a_shipment("SO-GONE", "YT9", hours_ago=6)])
    with engine.connect() as conn:
        due = due_waybills(conn, NOW, 2 * H, 10)
    assert due["waybill_no"].tolist() == ["YT1"]


# --- one polling pass ---------------------------------------------------------------------------------------


def due_parcels(engine, count: int) -> pd.DataFrame:
    """`count` live orders with a parcel each, never polled: all due, oldest shipped first."""
    add_rows(engine, "orders", [an_order(f"SO-{i}") for i in range(count)])
    add_rows(engine, "shipments", [a_shipment(f"SO-{i}", f"YT{i:04d}", hours_ago=5 + i / 60) for i in range(count)])
    with engine.connect() as conn:
        due = due_waybills(conn, NOW, 2 * H, count)
    assert len(due) == count
    return due


def client(handler, sleeps: Sleeps) -> Kuaidi100Client:
    base = Kuaidi100Client(endpoint="https://poll.kuaidi100.com/poll/query.do", customer=CUSTOMER, key=KEY)
    return base.with_transport(httpx.MockTransport(handler), sleep=sleeps)


def asked_waybill(request: httpx.Request) -> str:
    return json.loads(dict(parse_qsl(request.content.decode()))["param"])["num"]


def answer_for(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=answer_payload() | {"nu": asked_waybill(request)})


def stored(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(raw_tracking.c.waybill_no, raw_tracking.c.poll_error), conn)


def test_a_dead_carrier_stops_the_pass_after_five_failures_in_a_row(engine):
    due, sleeps, requests = due_parcels(engine, 1000), Sleeps(), []

    def dead(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise httpx.ReadTimeout("no answer")

    result = poll_due(engine, due, client(dead, sleeps).query, NOW)
    assert (result.asked, result.answers, result.skipped, result.circuit_open) == (5, 0, 995, True)
    assert len(requests) == 5 * 4 and sleeps == [0.5, 1.0, 2.0] * 5  # each of the five still had its retries
    assert sorted(stored(engine)["waybill_no"]) == sorted(due["waybill_no"].head(5))
    with engine.connect() as conn:  # the next run starts with the waybills this one left
        assert due_waybills(conn, NOW, 2 * H, 10)["waybill_no"].tolist() == due["waybill_no"][5:15].tolist()


def test_answers_between_failures_keep_the_pass_going(engine):
    due, sleeps, seen = due_parcels(engine, 12), Sleeps(), []
    no_record = {"result": False, "returnCode": "500", "message": "查询无结果，请隔段时间再查"}

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(asked_waybill(request))
        waybill = int(seen[-1][2:])
        if waybill % 3 == 2:
            return answer_for(request)
        if waybill % 3 == 1:  # an answer too, about the waybill: the carrier is up
            return httpx.Response(200, json=no_record)
        return httpx.Response(503)

    result = poll_due(engine, due, client(flaky, sleeps).query, NOW, max_consecutive_failures=2)
    assert (result.asked, result.answers, len(result.errors), result.skipped, result.circuit_open) == (
        12,
        4,
        8,
        0,
        False,
    )


def test_no_limit_asks_every_due_waybill(engine):
    due, sleeps = due_parcels(engine, 20), Sleeps()

    def dead(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502)

    result = poll_due(engine, due, client(dead, sleeps).query, NOW, max_consecutive_failures=0)
    assert (result.asked, result.skipped, result.circuit_open) == (20, 0, False)


def test_answers_are_stored_while_the_pass_goes_on(engine):
    due, sleeps, stored_when_asked, clock = due_parcels(engine, 60), Sleeps(), [], [0.0]

    def answering(request: httpx.Request) -> httpx.Response:  # one second an answer
        stored_when_asked.append(len(stored(engine)))
        clock[0] += 1
        return answer_for(request)

    poll_due(engine, due, client(answering, sleeps).query, NOW, clock=lambda: clock[0])
    # A run killed while asking the 45th waybill would keep the answers of all but its last 5 seconds.
    assert stored_when_asked[44] == 40
    assert len(stored(engine)) == 60


def test_answers_before_a_crash_are_kept(engine):
    due, sleeps, seen = due_parcels(engine, 10), Sleeps(), []

    def crashing(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 7:
            raise RuntimeError("the worker is going down")
        return answer_for(request)

    with pytest.raises(RuntimeError):
        poll_due(engine, due, client(crashing, sleeps).query, NOW)
    kept = stored(engine)
    assert sorted(kept["waybill_no"]) == sorted(due["waybill_no"].head(6))
    assert kept["poll_error"].isna().all()


# --- the asset, against a carrier on loopback that answers every query with 503 ---------------------------


@pytest.fixture
def unavailable_carrier() -> Iterator[tuple[str, list[str]]]:
    """The URL of a loopback server answering 503 to every POST, and the paths it was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            asked.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/poll/query.do", asked
    server.shutdown()
    server.server_close()


def test_the_asset_reports_an_open_circuit_and_what_it_left(engine, unavailable_carrier):
    url, asked = unavailable_carrier
    due_parcels(engine, 30)
    instance = dg.DagsterInstance.ephemeral()
    kuaidi100 = Kuaidi100Client(endpoint=url, customer=CUSTOMER, key=KEY, retries=1, backoff_seconds=0.0)
    result = dg.materialize(
        [carrier_tracking_asset(2 * H, 500, max_consecutive_failures=3)],
        instance=instance,
        resources={
            "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
            "clock": PipelineClock(now_at=NOW.isoformat()),
            "kuaidi100": kuaidi100,
        },
    )
    assert result.success and len(asked) == 3 * 2
    meta = materialization_metadata(instance, "raw_tracking")
    assert (meta["circuit_open"], meta["skipped"], meta["waybills_polled"]) == (True, 27, 3)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("3 times in a row" in m and "27 due waybills wait for the next run" in m for m in logs)


def subscribed(engine, waybill_no: str, state: str, heard_hours_ago: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            carrier_subscriptions.insert().values(
                waybill_no=waybill_no,
                carrier_code="yuantong",
                state=state,
                subscribed_at=NOW - heard_hours_ago * H,
                attempts_this_month=1,
                month="2026-11",
                updated_at=NOW - heard_hours_ago * H,
            )
        )


def test_a_waybill_kuaidi100_pushes_is_polled_only_once_its_pushes_went_quiet(engine):
    add_rows(engine, "orders", [an_order(f"SO-{i}") for i in range(5)])
    add_rows(engine, "shipments", [a_shipment(f"SO-{i}", f"YT{i}") for i in range(5)])
    subscribed(engine, "YT1", "subscribed", heard_hours_ago=3)  # pushes cover it
    subscribed(engine, "YT2", "duplicate", heard_hours_ago=3)  # tracked under an earlier subscription
    subscribed(engine, "YT3", "subscribed", heard_hours_ago=30)  # quiet past the silence: polled again
    subscribed(engine, "YT4", "aborted", heard_hours_ago=3)  # Kuaidi100 stopped: polling covers it
    with engine.connect() as conn:
        due = set(due_waybills(conn, NOW, 2 * H, 10, silence=24 * H)["waybill_no"])
        quiet = set(due_waybills(conn, NOW, 2 * H, 10, silence=2 * H)["waybill_no"])
    assert due == {"YT0", "YT3", "YT4"}
    assert quiet == {"YT0", "YT1", "YT2", "YT3", "YT4"}  # 3 h without a push is past a 2 h silence
