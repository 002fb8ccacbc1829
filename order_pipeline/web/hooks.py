"""POST /hooks/kuaidi100: Kuaidi100's subscription callback.

The form carries `param` (JSON) and `sign` = upper-case MD5(param + salt). A
verified push is stored like a polled answer and acknowledged with
`{"result": true, "returnCode": "200", "message": "成功"}`; anything else is
refused with `result: false`, logged, and nothing is stored.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from order_pipeline.carrier.protocol import Kuaidi100Error, parse_push, push_reply, verify_push
from order_pipeline.carrier.store import store_push
from order_pipeline.web.context import web_context
from order_pipeline.web.security.audit import client_ip
from order_pipeline.web.security.forms import FormError, read_form

log = logging.getLogger(__name__)

# A push carries a waybill's whole history; 2 MB leaves a long one plenty of room.
PUSH_BODY_BYTES = 2_000_000
FORM_REFUSALS = {
    413: "请求过大 (the form is too large or has too many parts)",
    415: "请求格式错误 (expected a form with param and sign)",
}


def refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({**push_reply(False, message), "returnCode": str(status)}, status_code=status)


async def kuaidi100_push(request: Request) -> JSONResponse:
    web = web_context(request)
    sender = client_ip(request)
    try:
        form = await read_form(request, max_bytes=PUSH_BODY_BYTES, multipart=True)
    except FormError as e:
        log.warning("Kuaidi100 push from %s refused: %s", sender, e)
        return refusal(e.status, FORM_REFUSALS.get(e.status, "请求格式错误: expected a form with param and sign"))
    param, sign = form.get("param", ""), form.get("sign", "")
    if not param or not sign:
        log.warning("Kuaidi100 push from %s refused: param or sign missing", sender)
        return refusal(400, "缺少 param 或 sign (param and sign are required)")
    if not web.push_salt:
        log.error("Kuaidi100 push from %s refused: carrier.push_salt is not configured", sender)
        return refusal(403, "接收方未配置 salt (push receiver has no salt configured)")
    if not verify_push(param, sign, web.push_salt):
        log.warning("Kuaidi100 push from %s refused: bad sign", sender)
        return refusal(403, "签名验证失败 (bad sign)")
    try:
        update = parse_push(param)  # Kuaidi100 writes China time, whatever the business's zone
    except Kuaidi100Error as e:
        log.warning("Kuaidi100 push from %s refused: %s", sender, e)
        return refusal(400, f"数据格式错误 ({e.message})")
    except RecursionError:  # the JSON decoder's own depth limit: no push of Kuaidi100's is nested like that
        log.warning("Kuaidi100 push from %s refused: param is JSON nested too deeply", sender)
        return refusal(400, "数据格式错误 (param is JSON nested too deeply; a push is a few levels deep)")
    if update.waybill_no is None:
        log.warning("Kuaidi100 push from %s refused: it names no waybill", sender)
        return refusal(400, "数据格式错误 (lastResult names no waybill)")
    try:
        state = await run_in_threadpool(store_push, web.engine, update, web.clock())
    except Exception:  # Kuaidi100 pushes again when the answer is not a success
        log.exception("Kuaidi100 push for waybill %s could not be stored", update.waybill_no)
        return refusal(500, "暂时无法保存，请稍后重推 (could not store, push again later)")
    if update.status == "abort":
        log.warning(
            "Kuaidi100 stopped tracking waybill %s (%s): subscribed again later", update.waybill_no, update.message
        )
    log.info("Kuaidi100 push stored for waybill %s (%s, subscription %s)", update.waybill_no, update.status, state)
    return JSONResponse(push_reply(True, "成功"))
