"""Kuaidi100Client.subscribe: the request it sends, what it retries, and the whole path through the stand-in."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from helpers import CUSTOMER, KEY, NOW, SALT, H, serve_app
from test_kuaidi100_client import REAL_URL, Recorder

from order_pipeline.carrier import sandbox
from order_pipeline.carrier.protocol import Kuaidi100Error
from order_pipeline.carrier.subscription import SUBSCRIBE_URL, Outcome, subscribe_url, verified_push
from order_pipeline.carrier.subscriptions import SubscribeResult, record_push, record_subscribe_results
from order_pipeline.contract.schema import carrier_subscriptions
from resources.carrier import Kuaidi100Client

CALLBACK = "http://track.example.com/hooks/kuaidi100"


def client_for(
    recorder: Recorder, delays: list[float], callback_url: str = CALLBACK, salt: str = SALT
) -> Kuaidi100Client:
    client = Kuaidi100Client(endpoint=REAL_URL, customer=CUSTOMER, key=KEY, callback_url=callback_url, salt=salt)
    return client.with_transport(httpx.MockTransport(recorder), sleep=delays.append)


def said(code: str, message: str = "") -> httpx.Response:
    return httpx.Response(200, json={"result": code == "200", "returnCode": code, "message": message})


def test_subscribe_posts_the_form_to_poll():
    recorder, delays = Recorder(said("200", "提交成功")), []
    answer = client_for(recorder, delays).subscribe("shunfeng", "SF1", "13912345678", to="上海市浦东新区")
    assert answer.outcome is Outcome.ACCEPTED
    request = recorder.requests[0]
    assert request.method == "POST" and str(request.url) == "https://poll.kuaidi100.com/poll"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = recorder.form()
    assert form["schema"] == "json"
    param = json.loads(form["param"])
    assert param["key"] == KEY and param["number"] == "SF1" and param["to"] == "上海市浦东新区"
    assert param["parameters"] == {
        "callbackurl": CALLBACK,
        "salt": SALT,
        "resultv2": "8",
        "phone": "13912345678",
    }


def test_subscriptions_go_to_the_poll_of_the_query_endpoint():
    assert subscribe_url(REAL_URL) == SUBSCRIBE_URL
    assert subscribe_url("http://127.0.0.1:8089/poll/query.do") == "http://127.0.0.1:8089/poll"
    assert subscribe_url("https://proxy.example.com/kuaidi100") == SUBSCRIBE_URL


def test_a_server_error_is_asked_again_with_backoff():
    recorder, delays = Recorder(said("500", "服务器错误"), said("500", "服务器错误"), said("200")), []
    answer = client_for(recorder, delays).subscribe("yuantong", "YT1")
    assert answer.outcome is Outcome.ACCEPTED and len(recorder.requests) == 3 and delays == [0.5, 1.0]


def test_a_server_error_to_the_last_attempt_is_returned_to_record():
    recorder, delays = Recorder(*[said("500", "服务器错误")] * 4), []
    answer = client_for(recorder, delays).subscribe("yuantong", "YT1")
    assert answer.outcome is Outcome.RETRY_LATER and answer.return_code == "500"
    assert len(recorder.requests) == 4 and delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("501", Outcome.DUPLICATE),
        ("600", Outcome.STOP_KEY),
        ("601", Outcome.STOP_KEY),
        ("700", Outcome.REJECTED),
        ("701", Outcome.REJECTED),
        ("702", Outcome.REJECTED),
    ],
)
def test_other_answers_are_not_asked_again(code: str, outcome: Outcome):
    recorder, delays = Recorder(said(code, "m")), []
    answer = client_for(recorder, delays).subscribe("yuantong", "YT1")
    assert answer.outcome is outcome and len(recorder.requests) == 1 and delays == []


def test_no_answer_raises_after_the_retries():
    recorder, delays = Recorder(*[httpx.ConnectError("refused")] * 4), []
    with pytest.raises(Kuaidi100Error) as caught:
        client_for(recorder, delays).subscribe("yuantong", "YT1")
    assert caught.value.retryable and "subscription of yuantong YT1 gave up after 4" in str(caught.value)


def test_an_unreadable_answer_raises():
    recorder, delays = Recorder(httpx.Response(200, json={"result": True})), []
    with pytest.raises(Kuaidi100Error, match="malformed subscribe answer"):
        client_for(recorder, delays).subscribe("yuantong", "YT1")


@pytest.mark.parametrize("missing", ["callback_url", "salt"])
def test_without_a_callback_url_and_salt_nothing_is_sent(missing: str):
    recorder, delays = Recorder(), []
    with pytest.raises(Kuaidi100Error, match=r"carrier\.callback_url .* carrier\.push_salt_env"):
        client_for(recorder, delays, **{missing: ""}).subscribe("yuantong", "YT1")
    assert recorder.requests == []


@pytest.fixture
def carrier_db(tmp_path: Path) -> Path:
    path = tmp_path / "carrier.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        sandbox.create_schema(conn)
        conn.executemany(
            "INSERT INTO carrier_waybills VALUES (?, ?, ?, ?, ?)",
            [("YT1000001", "yuantong", None, 0, 0), ("SF2000002", "shunfeng", "5678", 0, 0)],
        )
        conn.execute("INSERT INTO carrier_events VALUES ('YT1000001', '2026-11-24 09:00:00', '已揽收', NULL, NULL)")
    return path


def test_a_sandbox_endpoint_subscribes_in_process(carrier_db: Path):
    client = Kuaidi100Client(
        endpoint=f"sandbox://{carrier_db}", customer=CUSTOMER, key=KEY, callback_url=CALLBACK, salt=SALT
    )
    assert client.subscribe("yuantong", "YT1000001").outcome is Outcome.ACCEPTED
    assert client.subscribe("yuantong", "YT1000001").outcome is Outcome.DUPLICATE
    refused = client.subscribe("shunfeng", "SF2000002")
    assert refused.outcome is Outcome.REJECTED and refused.return_code == "700" and "phone" in refused.reason
    client.close()


@pytest.fixture
def sandbox_endpoint(carrier_db: Path) -> Iterator[str]:
    """The stand-in served by uvicorn on a free loopback port; its query endpoint's URL."""
    with serve_app(sandbox.app(carrier_db, CUSTOMER, KEY, clock=lambda: NOW)) as port:
        yield f"http://127.0.0.1:{port}{sandbox.QUERY_PATH}"


def test_subscribe_push_and_record_over_loopback(sandbox_endpoint: str, carrier_db: Path, engine: sa.Engine):
    client = Kuaidi100Client(
        endpoint=sandbox_endpoint, customer=CUSTOMER, key=KEY, callback_url=CALLBACK, salt=SALT, timeout_seconds=5
    )
    answer = client.subscribe("yuantong", "YT1000001")
    wrong_key = Kuaidi100Client(
        endpoint=sandbox_endpoint, customer=CUSTOMER, key="wrong", callback_url=CALLBACK, salt=SALT, timeout_seconds=5
    )
    assert wrong_key.subscribe("yuantong", "YT1000001").outcome is Outcome.STOP_KEY
    client.close()
    wrong_key.close()
    with engine.begin() as conn:
        record_subscribe_results(conn, [SubscribeResult("YT1000001", "yuantong", answer)], NOW)

    received: list[dict[str, str]] = []
    pushed = sandbox.push_updates(carrier_db, NOW + 1 * H, lambda url, form: received.append(form) or True)
    assert [(p.number, p.status) for p in pushed] == [("YT1000001", "polling")]
    update = verified_push(received[0], SALT)
    with engine.begin() as conn:
        assert record_push(conn, update, NOW + 1 * H) == "subscribed"
        stored = conn.execute(sa.select(carrier_subscriptions)).mappings().one()
    assert stored["return_code"] == "200" and stored["last_push_at"] is not None
