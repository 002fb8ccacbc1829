"""The SQLite-backed Kuaidi100 sandbox: answers in the real shape, in process and over loopback HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import CUSTOMER, KEY, serve_app

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier.protocol import Kuaidi100Error
from resources.carrier import Kuaidi100Client


@pytest.fixture
def carrier_db(tmp_path: Path) -> Path:
    path = tmp_path / "carrier.db"
    with sqlite3.connect(path) as conn:
        carrier_sandbox.create_schema(conn)
        conn.executemany(
            "INSERT INTO carrier_waybills VALUES (?, ?, ?, ?, ?)",
            [("YT100", "yuantong", None, 3, 1), ("SF200", "shunfeng", "5678", 0, 0)],
        )
        conn.executemany(
            "INSERT INTO carrier_events VALUES (?, ?, ?, ?, ?)",
            [
                ("YT100", "2026-11-23 08:00:00", "已揽收", "浙江,杭州市", "揽收"),
                ("YT100", "2026-11-24 15:30:00", "已签收", "上海,上海市", "签收"),
                ("YT100", "2026-11-23 22:10:00", "离开杭州", None, "干线"),
                ("SF200", "2026-11-24 09:00:00", "顺丰速运 已收取快件", "广东,深圳市", "揽收"),
            ],
        )
    conn.close()
    return path


def form_for(com: str, num: str, phone: str | None = None) -> dict[str, str]:
    return kuaidi100.query_form(com, num, phone, CUSTOMER, KEY)


def test_sandbox_answers_in_the_real_shape(carrier_db: Path):
    payload = carrier_sandbox.answer(carrier_db, form_for("yuantong", "YT100"), CUSTOMER, KEY)
    assert payload["message"] == "ok" and payload["status"] == "200"
    assert payload["state"] == "3" and payload["ischeck"] == "1"
    assert payload["nu"] == "YT100" and payload["com"] == "yuantong" and "condition" in payload
    assert [d["time"] for d in payload["data"]] == ["2026-11-24 15:30:00", "2026-11-23 22:10:00", "2026-11-23 08:00:00"]
    assert payload["data"][0] == {
        "time": "2026-11-24 15:30:00",
        "ftime": "2026-11-24 15:30:00",
        "context": "已签收",
        "areaName": "上海,上海市",
        "status": "签收",
    }


@pytest.mark.parametrize(
    ("form", "code"),
    [
        (form_for("yuantong", "YT100") | {"sign": "0" * 32}, "503"),
        (form_for("yuantong", "YT100") | {"customer": "SOMEONE"}, "400"),
        ({"customer": CUSTOMER}, "400"),
        (form_for("yuantong", "NOPE"), "500"),
        (form_for("zhongtong", "YT100"), "500"),
        (form_for("shunfeng", "SF200"), "408"),
        (form_for("shunfeng", "SF200", "1111"), "408"),
    ],
)
def test_sandbox_error_answers(carrier_db: Path, form: dict[str, str], code: str):
    payload = carrier_sandbox.answer(carrier_db, form, CUSTOMER, KEY)
    assert payload["result"] is False and payload["returnCode"] == code and payload["message"]


def test_sandbox_endpoint_uses_the_in_process_transport(carrier_db: Path):
    client = Kuaidi100Client(endpoint=f"sandbox://{carrier_db}", customer=CUSTOMER, key=KEY)
    answer = client.query("yuantong", "YT100", None)
    assert answer.is_signed and [e.context for e in answer.events] == ["已揽收", "离开杭州", "已签收"]
    assert answer.events[-1].at == datetime(2026, 11, 24, 7, 30, tzinfo=UTC)
    client.close()


@pytest.fixture
def sandbox_url(carrier_db: Path) -> Iterator[str]:
    """The sandbox served by uvicorn on a free loopback port."""
    with serve_app(carrier_sandbox.app(carrier_db, CUSTOMER, KEY)) as port:
        yield f"http://127.0.0.1:{port}{carrier_sandbox.QUERY_PATH}"


def test_sandbox_over_loopback_http(sandbox_url: str):
    client = Kuaidi100Client(endpoint=sandbox_url, customer=CUSTOMER, key=KEY, timeout_seconds=5)
    answer = client.query("yuantong", "YT100", None)
    assert answer.category == "signed" and len(answer.events) == 3

    with pytest.raises(Kuaidi100Error) as caught:
        client.query("shunfeng", "SF200", None)
    assert caught.value.return_code == "408" and not caught.value.retryable

    for phone in ("5678", "13912345678"):
        shunfeng = client.query("shunfeng", "SF200", phone)
        assert shunfeng.carrier_code == "shunfeng" and shunfeng.category == "in_transit"
        assert shunfeng.events[0].area == "广东,深圳市"

    with pytest.raises(Kuaidi100Error) as caught:
        client.query("yuantong", "NOPE", None)
    assert caught.value.return_code == "500" and caught.value.retryable

    wrong_key = Kuaidi100Client(endpoint=sandbox_url, customer=CUSTOMER, key="wrong")
    with pytest.raises(Kuaidi100Error) as caught:
        wrong_key.query("yuantong", "YT100", None)
    assert caught.value.return_code == "503"
    client.close()
    wrong_key.close()
