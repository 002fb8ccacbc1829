"""POST /hooks/kuaidi100: Kuaidi100's subscription callback.

The form carries `param` (JSON) and `sign` = upper-case MD5(param + salt). A
verified push is stored like a polled answer (`carrier.receiver`) and acknowledged with
`{"result": true, "returnCode": "200", "message": "成功"}`; anything else is
refused with `result: false`, logged, and nothing is stored.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from order_pipeline.carrier.protocol import push_reply
from order_pipeline.carrier.receiver import receive_push
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
    receipt = await run_in_threadpool(receive_push, web.engine, form, web.push_salt, web.clock(), sender)
    if not receipt.stored:
        return refusal(receipt.status, receipt.message)
    return JSONResponse(push_reply(True, receipt.message))
