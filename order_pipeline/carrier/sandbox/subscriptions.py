"""The stand-in's POST poll (subscribe) and the signed pushes it delivers to a subscription's callback URL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import subscription
from order_pipeline.carrier.sandbox.query import CHINA, tracking_payload

# Added to a database the demo generated before subscriptions existed, on its first subscription.
SUBSCRIPTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS carrier_estimates (
    waybill_no TEXT PRIMARY KEY,
    arrival_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sandbox_subscriptions (
    company TEXT NOT NULL,
    number TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    salt TEXT NOT NULL,
    resultv2 TEXT,
    status TEXT NOT NULL,
    subscribed_at TEXT NOT NULL,
    pushed_events INTEGER NOT NULL DEFAULT 0,
    com_old TEXT,
    PRIMARY KEY (company, number)
);
CREATE TABLE IF NOT EXISTS sandbox_subscribe_counts (
    company TEXT NOT NULL,
    number TEXT NOT NULL,
    month TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (company, number, month)
);
"""


# Carrier codes the stand-in knows beside those of its waybills; another is "not recognised".
KNOWN_COMPANIES = frozenset(
    {
        "shunfeng",
        "shunfengkuaiyun",
        "fengwang",
        "zhongtong",
        "yuantong",
        "yunda",
        "shentong",
        "jd",
        "ems",
        "youzhengguonei",
        "jtexpress",
        "debangkuaidi",
        "jituan",
    }
)


NO_RECORD_ABORT = (timedelta(days=3), "3天查询无记录")


NO_NEWS_ABORT = (timedelta(days=60), "60天无变化")


# The subscribe answers it gives.
ACCEPTED = ("200", "提交成功")


SERVER_ERROR = ("500", "服务器错误")


DUPLICATE = ("501", "重复订阅")


BAD_KEY = ("600", "您不是合法的订阅者")


KEY_EXPIRED = ("601", "POLL:KEY已过期")


NOT_RECOGNISED = ("702", "POLL:识别不到该单号对应的快递公司")


def subscribe(
    db_path: str | Path, form: dict[str, str], key: str, now: datetime, expired_keys: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Kuaidi100's answer to one subscribe form (POST /poll); an accepted one is kept for `push_updates`."""
    try:
        request = json.loads(form.get("param") or "")
    except ValueError:
        request = None
    if form.get("schema", "json") != "json" or not isinstance(request, dict):
        return _answer(SERVER_ERROR)  # Kuaidi100's answer to a request out of spec
    if request.get("key") in expired_keys:
        return _answer(KEY_EXPIRED)
    if request.get("key") != key:
        return _answer(BAD_KEY)
    parameters = request.get("parameters")
    if not isinstance(parameters, dict):
        return _bad_data("parameters 缺失 (parameters is required)")
    callback, salt = str(parameters.get("callbackurl") or ""), str(parameters.get("salt") or "")
    if not _is_http_url(callback):
        return _bad_data("回调地址错误 (callbackurl must be an http(s) URL)")
    if not salt:
        return _bad_data("salt 缺失 (this stand-in signs every push and needs a salt)")
    number = str(request.get("number") or "")
    if not 6 <= len(number) <= 32:
        return _bad_data("单号为空或长度不在6-32位 (number must have 6 to 32 characters)")
    company = str(request.get("company") or "")
    with closing(_connect_for_subscriptions(db_path)) as conn:
        carriers = {
            row[0]: row[1]
            for row in conn.execute("SELECT waybill_no, com FROM carrier_waybills WHERE waybill_no = ?", (number,))
        }
        if not company and str(parameters.get("autoCom", "")) == "1":
            if number not in carriers:
                return _answer(NOT_RECOGNISED)
            company = carriers[number]
        if not company:
            return _bad_data("快递公司编码为空 (company is required unless autoCom is 1)")
        known = KNOWN_COMPANIES | {row[0] for row in conn.execute("SELECT DISTINCT com FROM carrier_waybills")}
        if company not in known:
            return _answer(NOT_RECOGNISED)
        if company in subscription.PHONE_REQUIRED and not str(parameters.get("phone") or "").strip():
            return _bad_data("该快递公司需提供收件人手机号 (phone is required for this carrier)")
        row = conn.execute(
            "SELECT status FROM sandbox_subscriptions WHERE company = ? AND number = ?", (company, number)
        ).fetchone()
        if row and row[0] == "polling":
            return _answer(DUPLICATE)
        month = now.astimezone(CHINA).strftime("%Y-%m")
        count = conn.execute(
            "SELECT count FROM sandbox_subscribe_counts WHERE company = ? AND number = ? AND month = ?",
            (company, number, month),
        ).fetchone()
        # Beyond the month's cap Kuaidi100 answers as for a duplicate.
        if count and count[0] >= subscription.MONTHLY_CAP:
            return _answer(DUPLICATE)
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO sandbox_subscriptions "
                "(company, number, callback_url, salt, resultv2, status, subscribed_at, pushed_events) "
                "VALUES (?, ?, ?, ?, ?, 'polling', ?, 0)",
                (
                    company,
                    number,
                    callback,
                    salt,
                    str(parameters.get("resultv2") or ""),
                    now.astimezone(UTC).isoformat(),
                ),
            )
            conn.execute(
                "INSERT INTO sandbox_subscribe_counts VALUES (?, ?, ?, 1) "
                "ON CONFLICT (company, number, month) DO UPDATE SET count = count + 1",
                (company, number, month),
            )
    return _answer(ACCEPTED)


@dataclass(frozen=True, slots=True)
class Pushed:
    company: str
    number: str
    status: str  # polling | shutdown | abort
    delivered: bool  # the callback answered returnCode 200; otherwise it is pushed again next time


Deliver = Callable[[str, dict[str, str]], bool]


def push_updates(db_path: str | Path, now: datetime, deliver: Deliver) -> list[Pushed]:
    """Push each subscribed waybill's news to its callback URL, signed with its salt.

    News is events the last delivered push did not have. A push the callback does not
    acknowledge is not marked delivered, so the next call pushes it again.
    """
    pushed = []
    with closing(_connect_for_subscriptions(db_path)) as conn:
        subscriptions = conn.execute(
            "SELECT company, number, callback_url, salt, resultv2, subscribed_at, pushed_events, com_old "
            "FROM sandbox_subscriptions WHERE status = 'polling' ORDER BY subscribed_at, number"
        ).fetchall()
        for company, number, url, salt, resultv2, subscribed_at, pushed_events, com_old in subscriptions:
            due = _update(conn, company, number, resultv2, datetime.fromisoformat(subscribed_at), pushed_events, now)
            if due is None:
                continue
            if com_old:  # tracked under the code the stand-in corrected
                checked = {"autoCheck": "1", "comOld": com_old, "comNew": company}
            else:
                checked = {"autoCheck": "0", "comOld": "", "comNew": due.com_new or ""}
            body = {"status": due.status, "billstatus": "got", "message": due.message, **checked}
            param = json.dumps(body | {"lastResult": due.last}, ensure_ascii=False)
            delivered = deliver(url, {"param": param, "sign": kuaidi100.push_sign(param, salt)})
            if delivered:
                with conn:
                    conn.execute(
                        "UPDATE sandbox_subscriptions SET status = ?, pushed_events = ? "
                        "WHERE company = ? AND number = ?",
                        (due.status, len(due.last.get("data", [])), company, number),
                    )
                    if due.com_new:
                        conn.execute(
                            "INSERT OR REPLACE INTO sandbox_subscriptions "
                            "(company, number, callback_url, salt, resultv2, status, subscribed_at, pushed_events, "
                            "com_old) VALUES (?, ?, ?, ?, ?, 'polling', ?, 0, ?)",
                            (due.com_new, number, url, salt, resultv2, now.astimezone(UTC).isoformat(), company),
                        )
            pushed.append(Pushed(company, number, due.status, delivered))
    return pushed


def http_deliver(client: httpx.Client) -> Deliver:
    """Deliver pushes as Kuaidi100 does: a form POST, acknowledged only by returnCode 200."""

    def deliver(url: str, form: dict[str, str]) -> bool:
        try:
            response = client.post(url, data=form)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        return response.status_code == 200 and isinstance(body, dict) and str(body.get("returnCode")) == "200"

    return deliver


@dataclass(frozen=True, slots=True)
class _Due:
    status: str
    message: str
    last: dict[str, Any]  # lastResult
    com_new: str | None = None  # the carrier code the number is known under, when it is not the one subscribed


def _update(
    conn: sqlite3.Connection,
    company: str,
    number: str,
    resultv2: str,
    subscribed_at: datetime,
    pushed_events: int,
    now: datetime,
) -> _Due | None:
    """The push a subscription is due now, or None."""
    waybill = conn.execute(
        "SELECT state, ischeck FROM carrier_waybills WHERE waybill_no = ? AND com = ?", (number, company)
    ).fetchone()
    last = tracking_payload(conn, number, company, waybill[0], waybill[1], resultv2) if waybill else {}
    events = last.get("data")
    if not events:
        after, message = NO_RECORD_ABORT
        if now - subscribed_at < after:
            return None
        # Nothing to track: the push names its waybill and carries no events.
        nothing = {"message": message, "nu": number, "com": company, "ischeck": "0"}
        other = conn.execute(
            "SELECT com FROM carrier_waybills WHERE waybill_no = ? AND com != ?", (number, company)
        ).fetchone()
        return _Due("abort", message, nothing, other[0] if other else None)
    if waybill is not None and waybill[1]:
        return _Due("shutdown", "", last)
    if len(events) > pushed_events:
        return _Due("polling", "", last)
    newest = datetime.fromisoformat(events[0]["time"]).replace(tzinfo=CHINA)
    after, message = NO_NEWS_ABORT
    return _Due("abort", message, last) if now - newest >= after else None


def _connect_for_subscriptions(db_path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(db_path), timeout=30)
    conn.executescript(SUBSCRIPTION_SCHEMA)
    return conn


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _bad_data(detail: str) -> dict[str, Any]:
    return _answer(("700", f"订阅方的订阅数据存在错误: {detail}"))


def _answer(code_message: tuple[str, str]) -> dict[str, Any]:
    code, message = code_message
    return {"result": code == "200", "returnCode": code, "message": message}
