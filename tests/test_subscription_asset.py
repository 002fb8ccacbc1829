"""The carrier_subscriptions asset: each due waybill subscribed, answers recorded, a refused key stops it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import dagster as dg
import pytest
import sqlalchemy as sa
from helpers import CUSTOMER, KEY, NOW, SALT, add_rows, materialization_metadata
from test_kuaidi100_polling import a_shipment, an_order

from assets.subscriptions import carrier_subscriptions_asset
from order_pipeline.contract.schema import carrier_subscriptions
from resources.carrier import Kuaidi100Client
from resources.warehouse import PipelineClock, WarehouseResource

# What the loopback Kuaidi100 answers per waybill; any other is accepted.
ANSWERS = {"YT2": ("501", "重复订阅"), "YT3": ("702", "无法识别快递公司")}


@pytest.fixture
def kuaidi100() -> Iterator[tuple[str, list[str], dict[str, tuple[str, str]]]]:
    """The query URL of a loopback Kuaidi100 answering subscriptions, the numbers asked, and its answers."""
    asked: list[str] = []
    answers = dict(ANSWERS)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            form = dict(parse_qsl(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()))
            number = json.loads(form["param"])["number"]
            asked.append(number)
            code, message = answers.get(number, answers.get("*", ("200", "提交成功")))
            body = json.dumps({"result": code == "200", "returnCode": code, "message": message}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/poll/query.do", asked, answers
    server.shutdown()
    server.server_close()


def run(engine, url: str) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    client = Kuaidi100Client(
        endpoint=url, customer=CUSTOMER, key=KEY, callback_url="http://track.example.com/hooks/kuaidi100", salt=SALT
    )
    result = dg.materialize(
        [carrier_subscriptions_asset(max_per_run=10, max_consecutive_failures=5)],
        instance=instance,
        resources={
            "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
            "clock": PipelineClock(now_at=NOW.isoformat()),
            "kuaidi100": client,
        },
        raise_on_error=False,
    )
    return result, instance


def states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        s = carrier_subscriptions
        return dict(conn.execute(sa.select(s.c.waybill_no, s.c.state)).all())


def test_each_shipped_waybill_is_subscribed_once_and_its_answer_recorded(engine, kuaidi100):
    url, asked, _ = kuaidi100
    add_rows(engine, "orders", [an_order(f"SO-{i}") for i in range(4)])
    add_rows(engine, "shipments", [a_shipment(f"SO-{i}", f"YT{i}") for i in range(4)])
    result, instance = run(engine, url)
    assert result.success
    assert sorted(asked) == ["YT0", "YT1", "YT2", "YT3"]
    assert states(engine) == {"YT0": "subscribed", "YT1": "subscribed", "YT2": "duplicate", "YT3": "rejected"}
    meta = materialization_metadata(instance, "carrier_subscriptions")
    assert (meta["subscribe_accepted"], meta["subscribe_duplicate"], meta["subscribe_rejected"]) == (2, 1, 1)
    asked.clear()
    assert run(engine, url)[0].success and asked == []  # nothing is subscribed twice


def test_a_refused_key_stops_subscribing_and_fails_the_asset_with_its_fix(engine, kuaidi100):
    url, asked, answers = kuaidi100
    answers["*"] = ("600", "不是有效的订阅者")
    add_rows(engine, "orders", [an_order(f"SO-{i}") for i in range(4)])
    add_rows(engine, "shipments", [a_shipment(f"SO-{i}", f"YT{i}") for i in range(4)])
    result, _ = run(engine, url)
    assert not result.success and asked == ["YT0"]  # the same key would be refused for every waybill
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message if failure.step_failure_data.error else ""
    assert "600" in message and "polling goes on" in message and "carrier.key_env" in message
    assert states(engine) == {}  # a key problem says nothing about the waybills
