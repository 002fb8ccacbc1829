"""The stand-in's POST poll/query.do: the demo's waybills and events, answered in Kuaidi100's shapes."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import subscription

QUERY_PATH = "/poll/query.do"


SCHEMA = """
CREATE TABLE IF NOT EXISTS carrier_waybills (
    waybill_no TEXT PRIMARY KEY,
    com TEXT NOT NULL,
    phone_tail TEXT,
    state INTEGER NOT NULL,
    ischeck INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS carrier_events (
    waybill_no TEXT NOT NULL,
    time TEXT NOT NULL,
    context TEXT NOT NULL,
    area_name TEXT,
    status TEXT
);
CREATE INDEX IF NOT EXISTS carrier_events_waybill ON carrier_events (waybill_no);
"""


# The real service's messages for the answers the sandbox gives.
BAD_FORM = ("400", "提交的数据不完整，或者贵公司没授权")


UNKNOWN_COMPANY = ("400", "找不到对应公司")


PHONE_MISMATCH = ("408", "快递公司参数异常：验证码错误")


NO_RECORD = ("500", "查询无结果，请隔段时间再查")


BAD_SIGN = ("503", "验证签名失败")


CHINA = ZoneInfo(kuaidi100.DEFAULT_TZ)


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables the demo generator fills; the subscription tables come with the first subscription."""
    conn.executescript(SCHEMA)


def answer(db_path: str | Path, form: dict[str, str], customer: str, key: str) -> dict[str, Any]:
    """Kuaidi100's answer to one query form."""
    param = form.get("param")
    if form.get("customer") != customer or not param or not form.get("sign"):
        return _error(BAD_FORM)
    if form["sign"] != kuaidi100.sign(param, key, customer):
        return _error(BAD_SIGN)
    try:
        query = json.loads(param)
    except ValueError:
        return _error(BAD_FORM)
    if not isinstance(query, dict) or not query.get("com") or not query.get("num"):
        return _error(BAD_FORM)
    com, num = str(query["com"]), str(query["num"])

    with closing(connect_read_only(db_path)) as conn:
        waybill = conn.execute(
            "SELECT com, phone_tail, state, ischeck FROM carrier_waybills WHERE waybill_no = ?", (num,)
        ).fetchone()
        # Asked under another carrier's code, a real waybill is as unknown as a wrong number.
        if waybill is None or waybill[0] != com:
            return _error(NO_RECORD)
        _, phone_tail, state, ischeck = waybill
        if com in kuaidi100.PHONE_REQUIRED and not _phone_matches(query.get("phone"), phone_tail):
            return _error(PHONE_MISMATCH)
        return tracking_payload(conn, num, com, state, ischeck, str(query.get("resultv2", "0")))


def tracking_payload(
    conn: sqlite3.Connection, num: str, com: str, state: int, ischeck: int, resultv2: str
) -> dict[str, Any]:
    """A waybill's tracking in the shape of a query answer (and of a push's lastResult)."""
    events = conn.execute(
        "SELECT time, context, area_name, status FROM carrier_events WHERE waybill_no = ? "
        "ORDER BY time DESC, rowid DESC",
        (num,),
    ).fetchall()
    # Area and status per event come only when resultv2 asks for them, as with Kuaidi100.
    detailed = resultv2 not in ("", "0")
    answer: dict[str, Any] = {
        "message": "ok",
        "nu": num,
        "ischeck": "1" if ischeck else "0",
        "condition": "00",
        "com": com,
        "status": "200",
        "state": str(state),
        "data": [_event(row, detailed) for row in events],
    }
    if resultv2 == subscription.RESULTV2_WITH_ETA and has_table(conn, "carrier_estimates"):
        estimate = conn.execute("SELECT arrival_time FROM carrier_estimates WHERE waybill_no = ?", (num,)).fetchone()
        if estimate:
            answer["arrivalTime"] = estimate[0]
    return answer


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)


def _phone_matches(phone: Any, phone_tail: str | None) -> bool:
    """Kuaidi100 accepts the full number or its last 4 digits."""
    digits = "".join(ch for ch in str(phone or "") if ch.isdigit())
    return len(digits) >= 4 and bool(phone_tail) and digits[-4:] == phone_tail[-4:]


def _event(row: tuple[str, str, str | None, str | None], detailed: bool) -> dict[str, Any]:
    time, context, area_name, status = row
    event: dict[str, Any] = {"time": time, "ftime": time, "context": context}
    if detailed:
        event |= {"areaName": area_name, "status": status}
    return event


def _error(code_message: tuple[str, str]) -> dict[str, Any]:
    code, message = code_message
    return {"result": False, "returnCode": code, "message": message}
