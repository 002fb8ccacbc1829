"""Receiving a Kuaidi100 push: check its sign, store it, and say what to answer.

One function for both ways a push arrives: the form POST to `/hooks/kuaidi100` (`web.hooks`)
and the demo's stand-in handing its pushes over in-process when no server runs
(`in_process_deliver`). Kuaidi100 pushes again whatever it is not answered 200 for, so a
push is answered 200 only once it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from order_pipeline.carrier.protocol import Kuaidi100Error, parse_push, verify_push
from order_pipeline.carrier.store import store_push

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    status: int  # 200 when stored; the HTTP status of the refusal otherwise
    message: str  # the answer's `message`, Chinese first as Kuaidi100 writes it

    @property
    def stored(self) -> bool:
        return self.status == 200


def receive_push(
    engine: sa.Engine, form: Mapping[str, str], salt: str | None, now: datetime, sender: str = "in-process"
) -> Receipt:
    """Verify and store one push (`param`, `sign`); every refusal is logged with its reason."""

    def refused(status: int, message: str, reason: str, level: int = logging.WARNING) -> Receipt:
        log.log(level, "Kuaidi100 push from %s refused: %s", sender, reason)
        return Receipt(status, message)

    param, sign = form.get("param", ""), form.get("sign", "")
    if not param or not sign:
        return refused(400, "缺少 param 或 sign (param and sign are required)", "param or sign missing")
    if not salt:
        return refused(
            403,
            "接收方未配置 salt (push receiver has no salt configured)",
            "carrier.push_salt is not configured",
            logging.ERROR,
        )
    if not verify_push(param, sign, salt):
        return refused(403, "签名验证失败 (bad sign)", "bad sign")
    try:
        update = parse_push(param)  # Kuaidi100 writes China time, whatever the business's zone
    except Kuaidi100Error as e:
        return refused(400, f"数据格式错误 ({e.message})", e.message)
    except RecursionError:  # the JSON decoder's own depth limit: no push of Kuaidi100's is nested like that
        return refused(
            400,
            "数据格式错误 (param is JSON nested too deeply; a push is a few levels deep)",
            "param is JSON nested too deeply",
        )
    if update.waybill_no is None:
        return refused(400, "数据格式错误 (lastResult names no waybill)", "it names no waybill")
    try:
        state = store_push(engine, update, now)
    except Exception:  # Kuaidi100 pushes again when the answer is not a success
        log.exception("Kuaidi100 push for waybill %s could not be stored", update.waybill_no)
        return Receipt(500, "暂时无法保存，请稍后重推 (could not store, push again later)")
    if update.status == "abort":
        log.warning(
            "Kuaidi100 stopped tracking waybill %s (%s): subscribed again later", update.waybill_no, update.message
        )
    log.info("Kuaidi100 push stored for waybill %s (%s, subscription %s)", update.waybill_no, update.status, state)
    return Receipt(200, "成功")


def in_process_deliver(
    engine: sa.Engine, salt: str, clock: Callable[[], datetime]
) -> Callable[[str, dict[str, str]], bool]:
    """A `Deliver` for the stand-in's `push_updates` that hands each push to `receive_push` directly."""

    def deliver(_url: str, form: dict[str, str]) -> bool:
        return receive_push(engine, form, salt, clock()).stored

    return deliver
