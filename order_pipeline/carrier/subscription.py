"""The Kuaidi100 subscription protocol: the subscribe form, its answers, verified pushes.

Pure functions over strings and dicts, no I/O, like `protocol` (whose answer and push parsers
they reuse). POST https://poll.kuaidi100.com/poll with the form `schema=json` and `param`, a
JSON object: `company`, `number`, `key`, `from`/`to` where known, and `parameters` with
`callbackurl` (required; plain http unless Kuaidi100 enabled https for the account), `salt`
(pushes are signed only when it is sent), `resultv2` and `phone`.

The answer is `{"result": ..., "returnCode": ..., "message": ...}`:

| returnCode | meaning                                                        | what to do                       |
|------------|----------------------------------------------------------------|----------------------------------|
| 200        | accepted                                                       | wait for pushes                  |
| 501        | already subscribed and still tracked; also the answer to a 5th | record it: it is tracked         |
|            | subscription of the same number within a month                 |                                  |
| 500        | server fault, or a request out of spec (e.g. a wrong company)  | later, with backoff              |
| 600        | not a valid subscriber: the key is wrong                       | stop subscribing; fix the key    |
| 601        | the key has expired                                            | stop subscribing; renew it       |
| 700        | bad data: unsupported company, number empty or too long, bad   | record on the waybill, no retry  |
|            | callback URL                                                   |                                  |
| 701        | the carrier refuses subscriptions                              | record on the waybill, no retry  |
| 702        | the carrier of the number is not recognised                    | record on the waybill, no retry  |

A push is a form POST to `callbackurl` with `param` (JSON: `status` polling / shutdown / abort /
updateall, `message`, `autoCheck`, `comOld`, `comNew`, `lastResult` in the query's shape) and
`sign` = MD5(param + salt). `abort` ("3天查询无记录", "60天无变化") ends tracking: subscribe again
no sooner than 30 minutes later. `shutdown` means the waybill is finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from order_pipeline.carrier import protocol
from order_pipeline.carrier.protocol import DEFAULT_TZ, Kuaidi100Error, PushUpdate

SUBSCRIBE_URL = "https://poll.kuaidi100.com/poll"
QUERY_SUFFIX = "/query.do"

MONTHLY_CAP = 4  # subscriptions of one number with one carrier a month; Kuaidi100 answers 501 beyond
RESUBSCRIBE_AFTER = timedelta(minutes=30)  # after an abort, Kuaidi100 asks for this pause

# 8: area, advanced status and the carrier's predicted arrival (`arrivalTime`), which Kuaidi100
# computes only when `to` is sent; without it 4 asks for the rest.
RESULTV2_WITH_ETA = "8"
RESULTV2_WITHOUT_ETA = protocol.RESULTV2

# 顺丰 needs the recipient's phone to subscribe; the real-time query and the map-track docs add
# 中通 and 顺丰快运, 丰网 answers only with it when queried.
PHONE_REQUIRED = protocol.PHONE_REQUIRED | {"zhongtong"}

PUSH_STATUSES = frozenset({"polling", "shutdown", "abort", "updateall"})


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # 200
    DUPLICATE = "duplicate"  # 501
    RETRY_LATER = "retry_later"  # 500
    STOP_KEY = "stop_key"  # 600, 601
    REJECTED = "rejected"  # 700, 701, 702


OUTCOMES = {
    "200": Outcome.ACCEPTED,
    "501": Outcome.DUPLICATE,
    "500": Outcome.RETRY_LATER,
    "600": Outcome.STOP_KEY,
    "601": Outcome.STOP_KEY,
    "700": Outcome.REJECTED,
    "701": Outcome.REJECTED,
    "702": Outcome.REJECTED,
}

REASONS = {
    "700": "bad subscription data (unsupported company, number empty or too long, or bad callback URL)",
    "701": "the carrier refuses subscriptions",
    "702": "the carrier of this number is not recognised",
    "600": "the Kuaidi100 key is not valid",
    "601": "the Kuaidi100 key has expired",
}


@dataclass(frozen=True, slots=True)
class SubscribeAnswer:
    outcome: Outcome
    return_code: str
    message: str  # Kuaidi100's own message

    @property
    def tracked(self) -> bool:
        """Kuaidi100 tracks the waybill now and will push its news."""
        return self.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE)

    @property
    def reason(self) -> str:
        """What the code means, then Kuaidi100's message: for the waybill's record and the ops board."""
        meaning = REASONS.get(self.return_code)
        return f"{meaning}: {self.message}" if meaning and self.message else meaning or self.message


def subscribe_url(query_url: str) -> str:
    """Subscriptions go to the query endpoint's `poll`: the real service's, or a stand-in's on loopback."""
    return query_url.removesuffix(QUERY_SUFFIX) if query_url.endswith("/poll" + QUERY_SUFFIX) else SUBSCRIBE_URL


def subscribe_form(
    company: str,
    number: str,
    key: str,
    callback_url: str,
    salt: str,
    phone: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    resultv2: str = RESULTV2_WITH_ETA,
) -> dict[str, str]:
    """The form of POST /poll. Without a destination the predicted arrival cannot be had, so 8 becomes 4."""
    if resultv2 == RESULTV2_WITH_ETA and not to:
        resultv2 = RESULTV2_WITHOUT_ETA
    parameters = {"callbackurl": callback_url, "salt": salt, "resultv2": resultv2}
    if phone:
        parameters["phone"] = phone
    fields: dict[str, Any] = {"company": company, "number": number}
    if from_:
        fields["from"] = from_
    if to:
        fields["to"] = to
    fields |= {"key": key, "parameters": parameters}
    return {"schema": "json", "param": json.dumps(fields, ensure_ascii=False, separators=(",", ":"))}


def parse_subscribe_answer(payload: Any) -> SubscribeAnswer:
    """The answer of POST /poll -> SubscribeAnswer; raises Kuaidi100Error when it is not one."""
    if not isinstance(payload, dict) or "returnCode" not in payload:
        raise Kuaidi100Error("malformed subscribe answer: expected a JSON object with returnCode")
    code = str(payload["returnCode"]).strip()
    outcome = OUTCOMES.get(code)
    message = str(payload.get("message") or "")
    if outcome is None:
        raise Kuaidi100Error(f"unknown subscribe answer: {message or 'no message'}", code or None)
    return SubscribeAnswer(outcome, code, message)


def verified_push(form: dict[str, str], salt: str, tz: str = DEFAULT_TZ) -> PushUpdate:
    """A push form -> PushUpdate, once its sign is MD5(param + salt) and it names its waybill.

    Raises Kuaidi100Error naming what is wrong; nothing of a refused push should be stored.
    """
    param, sign = form.get("param", ""), form.get("sign", "")
    if not param or not sign:
        raise Kuaidi100Error("push refused: param and sign are required")
    if not protocol.verify_push(param, sign, salt):
        raise Kuaidi100Error("push refused: the sign is not MD5(param + salt)")
    update = protocol.parse_push(param, tz)
    if update.status not in PUSH_STATUSES:
        raise Kuaidi100Error(f"malformed push: status {update.status!r} is none of {', '.join(sorted(PUSH_STATUSES))}")
    if update.waybill_no is None:
        raise Kuaidi100Error("malformed push: lastResult names no waybill (nu)")
    return update
