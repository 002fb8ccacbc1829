"""The Kuaidi100 protocol: signing, the query form, answers, push callbacks.

Pure functions over strings and dicts, no I/O: the HTTP client lives in
`resources.carrier`, the stand-in service in `order_pipeline.carrier.sandbox`, the meaning of
each parcel state in `order_pipeline.domain.carrier_states`.

Error answers of POST poll/query.do come as HTTP 200 with
`{"result": false, "returnCode": ..., "message": ...}`:

| returnCode | message (zh)                      | meaning                                        | retry        |
|------------|-----------------------------------|------------------------------------------------|--------------|
| 400        | 找不到对应公司 / 提交的数据不完整 | unknown `com`, bad form, account not enabled   | no: fix it   |
| 408        | 快递公司参数异常：验证码错误      | `phone` missing or wrong (顺丰, 丰网, ...)     | no: fix it   |
| 500        | 查询无结果，请隔段时间再查        | the carrier has no record (yet) of the waybill | later        |
| 501        | 服务器错误                        | intermittent fault at Kuaidi100                | now, backoff |
| 502        | 服务器繁忙                        | Kuaidi100 overloaded                           | now, backoff |
| 503        | 验证签名失败                      | sign is not MD5(param + key + customer)        | no: fix it   |
| 601        | key已过期                         | no query quota left: the account needs topping | no: fix it   |

"Later" means the next poll: Kuaidi100 asks that one waybill be queried at most
every 30 minutes, so asking again within seconds only repeats the same answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from order_pipeline.domain.carrier_states import OUT_FOR_DELIVERY_STATE, base_state, category

DEFAULT_TZ = "Asia/Shanghai"

# Asked with every query: area and status per event, and a finer `state` (see `base_state`).
RESULTV2 = "4"

# 顺丰速运, 顺丰快运 and 丰网 answer only when `phone` (the recipient's mobile or its last
# 4 digits) is sent.
PHONE_REQUIRED = frozenset({"shunfeng", "shunfengkuaiyun", "fengwang"})

SERVER_FAULTS = frozenset({"501", "502"})  # worth retrying within the same call
NOT_YET = frozenset({"500"})  # worth asking again at the next poll


class Kuaidi100Error(Exception):
    """A failed query or push: an error answer, a malformed answer, or a transport failure.

    `return_code` is Kuaidi100's own code when it sent one; `retryable` says whether the
    same request may succeed later (see the table in the module docstring).
    """

    def __init__(self, message: str, return_code: str | None = None, retryable: bool = False):
        self.message = message
        self.return_code = return_code
        self.retryable = retryable
        super().__init__(f"Kuaidi100 {return_code}: {message}" if return_code else f"Kuaidi100: {message}")


class Kuaidi100Unavailable(Kuaidi100Error):
    """No usable answer even after the client's retries: a timeout, a failed connection, HTTP 429 or
    5xx, or a server-busy answer (501/502). It says nothing about the waybill; many in a row say
    that Kuaidi100 is down or unreachable."""


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    at: datetime  # UTC
    context: str
    area: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class TrackingAnswer:
    waybill_no: str
    carrier_code: str
    state: int  # as Kuaidi100 sent it, possibly a finer resultv2 state such as 304
    is_signed: bool
    events: tuple[TrackingEvent, ...]  # oldest first
    # `arrivalTime`: the carrier's predicted arrival (UTC), sent with resultv2=8 for the carriers
    # Kuaidi100 estimates; None when absent or not a time.
    predicted_arrival: datetime | None = None

    @property
    def category(self) -> str:
        return category(self.state)

    @property
    def out_for_delivery(self) -> bool:
        return base_state(self.state) == OUT_FOR_DELIVERY_STATE


@dataclass(frozen=True, slots=True)
class PushUpdate:
    status: str  # polling | shutdown | abort | updateall
    message: str
    answer: TrackingAnswer | None  # None when the push carries no tracking (e.g. abort)
    waybill_no: str | None = None  # lastResult.nu: an abort without events still names its waybill
    carrier_code: str | None = None  # lastResult.com
    auto_check: bool = False  # autoCheck == "1": the tracking is under Kuaidi100's corrected code
    com_old: str | None = None  # the code subscribed, when Kuaidi100 corrected it
    com_new: str | None = None  # the code Kuaidi100 tracks the waybill under since


def sign(param: str, key: str, customer: str) -> str:
    return _md5_upper(param + key + customer)


def query_form(com: str, num: str, phone: str | None, customer: str, key: str) -> dict[str, str]:
    """The form of POST poll/query.do; the sign covers exactly the `param` string sent."""
    fields = {"com": com, "num": num}
    if phone:
        fields["phone"] = phone
    fields["resultv2"] = RESULTV2
    param = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return {"customer": customer, "param": param, "sign": sign(param, key, customer)}


def parse_answer(payload: Any, tz: str = DEFAULT_TZ) -> TrackingAnswer:
    """A query answer (or a push's `lastResult`) -> TrackingAnswer; raises Kuaidi100Error."""
    if not isinstance(payload, dict):
        raise Kuaidi100Error(f"malformed answer: expected a JSON object, got {type(payload).__name__}")
    if payload.get("result") is False or ("returnCode" in payload and "data" not in payload):
        code = str(payload.get("returnCode", "")) or None
        raise Kuaidi100Error(str(payload.get("message", "")), code, retryable=code in SERVER_FAULTS | NOT_YET)
    missing = [name for name in ("state", "data", "nu", "com") if name not in payload]
    if missing:
        raise Kuaidi100Error(f"malformed answer: no {', '.join(missing)}")
    try:
        state = int(payload["state"])
    except (TypeError, ValueError):
        raise Kuaidi100Error(f"malformed answer: state {payload['state']!r} is not a number") from None
    if not isinstance(payload["data"], list):
        raise Kuaidi100Error("malformed answer: data is not a list")
    zone = ZoneInfo(tz)
    return TrackingAnswer(
        waybill_no=str(payload["nu"]),
        carrier_code=str(payload["com"]),
        state=state,
        is_signed=str(payload.get("ischeck", "0")) == "1",
        events=_normalize([_event(item, zone) for item in payload["data"]]),
        predicted_arrival=_predicted_arrival(payload.get("arrivalTime"), zone),
    )


def verify_push(param: str, sign: str, salt: str) -> bool:
    """True when the push's sign is MD5(param + salt), upper-case.

    Without a salt anyone could compute the sign, so an empty salt verifies nothing.
    """
    if not salt:
        return False
    return hmac.compare_digest(push_sign(param, salt).encode(), sign.strip().upper().encode())


def push_sign(param: str, salt: str) -> str:
    """The sign Kuaidi100 puts on a push: MD5(param + salt), upper-case."""
    return _md5_upper(param + salt)


def parse_push(param: str, tz: str = DEFAULT_TZ) -> PushUpdate:
    try:
        body = json.loads(param)
    except ValueError:
        raise Kuaidi100Error("malformed push: param is not JSON") from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("status"), str)
        or not isinstance(body.get("message"), str)
    ):
        raise Kuaidi100Error("malformed push: param needs string fields status and message")
    last = body.get("lastResult")
    # abort/shutdown pushes may carry an empty lastResult: that is news, not tracking.
    answer = parse_answer(last, tz) if isinstance(last, dict) and "data" in last else None
    last = last if isinstance(last, dict) else {}
    return PushUpdate(
        status=body["status"],
        message=body["message"],
        answer=answer,
        waybill_no=_text(last.get("nu")),
        carrier_code=_text(last.get("com")),
        auto_check=str(body.get("autoCheck", "0")) == "1",
        com_old=_text(body.get("comOld")),
        com_new=_text(body.get("comNew")),
    )


PUSH_OK: dict[str, Any] = {"result": True, "returnCode": "200", "message": "成功"}


def push_reply(ok: bool, message: str) -> dict[str, Any]:
    """The receiver's answer; anything but returnCode 200 makes Kuaidi100 push again."""
    return {"result": ok, "returnCode": "200" if ok else "500", "message": message}


def _md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def _text(value: Any) -> str | None:
    """A field's text, None when missing or blank."""
    if value is None:
        return None
    return str(value).strip() or None


def _predicted_arrival(value: Any, zone: ZoneInfo) -> datetime | None:
    """`arrivalTime` in China wall-clock time -> UTC; a bare date means by the end of that day.

    An estimate that is not a time is no reason to refuse the tracking that came with it.
    """
    text = _text(value)
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    if len(text) <= len("2026-12-05"):
        at = at.replace(hour=23, minute=59, second=59)
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at.astimezone(UTC)


def _event(item: Any, zone: ZoneInfo) -> TrackingEvent:
    if not isinstance(item, dict):
        raise Kuaidi100Error("malformed answer: an event is not an object")
    stamp = item.get("ftime") or item.get("time")
    try:
        at = datetime.fromisoformat(str(stamp))
    except ValueError:
        raise Kuaidi100Error(f"malformed answer: event time {stamp!r}") from None
    if at.tzinfo is None:  # Kuaidi100 times are China local wall-clock times
        at = at.replace(tzinfo=zone)
    return TrackingEvent(
        at=at.astimezone(UTC),
        context=str(item.get("context") or ""),
        area=item.get("areaName") or None,
        status=item.get("status") or None,
    )


def _normalize(newest_first: list[TrackingEvent]) -> tuple[TrackingEvent, ...]:
    """Oldest first without exact repeats; events at the same second keep the carrier's order."""
    seen: set[tuple[datetime, str]] = set()
    events: list[TrackingEvent] = []
    for event in reversed(newest_first):
        if (event.at, event.context) not in seen:
            seen.add((event.at, event.context))
            events.append(event)
    return tuple(sorted(events, key=lambda e: e.at))
