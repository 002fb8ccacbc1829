"""Every word a customer reads, in Chinese (default) and English."""

from __future__ import annotations

from order_pipeline.domain.carrier_states import CARRIER_NAMES
from order_pipeline.domain.stages import HAPPY_PATH
from order_pipeline.domain.stages import STAGE_LABELS as PIPELINE_STAGE_LABELS

LANGS = ("zh", "en")

STAGES = HAPPY_PATH
OFF_PATH = ("cancelled", "exception")
ALL_STAGES = (*STAGES, *OFF_PATH)

STAGE_LABELS = {
    "zh": dict(PIPELINE_STAGE_LABELS),
    "en": {
        "ordered": "Order placed",
        "paid": "Payment confirmed",
        "locked": "Stock reserved",
        "shipped": "Packed and shipped",
        "in_transit": "In transit",
        "delivered": "Delivered",
        "cancelled": "Cancelled",
        "exception": "Delivery problem",
    },
}

TEXT = {
    "zh": {
        "title": "订单查询",
        "order_no": "订单号",
        "recipient": "收件人",
        "phone": "电话",
        "address": "收货地区",
        "progress": "订单进度",
        "next": "接下来",
        "eta": "预计送达",
        "eta_by_carrier": "快递公司预估",
        "promised": "承诺送达",
        "parcels": "包裹",
        "waybill": "运单号",
        "carrier": "快递公司",
        "events": "物流动态",
        "no_events": "暂无物流动态。",
        "updated": "信息更新于",
        "switch_lang": "English",
        "pending": "待处理",
        "out_for_delivery": "派送中",
        "signed": "已签收",
        "time_note": "时间为{tz}时间",
        "cancelled_banner": "此订单已取消。",
        "exception_banner": "包裹配送遇到问题",
        "next.ordered": "我们正在等待您的付款确认。确认后仓库会立即为您锁定库存。",
        "next.paid": "付款已确认，仓库正在为您锁定库存。",
        "next.locked": "商品已为您预留，仓库正在打包，出库后这里会显示运单号。",
        "next.shipped": "包裹已打包出库，正在等待快递公司揽收。",
        "next.in_transit": "包裹正在运输途中，到达您所在的城市后会安排派送。",
        "next.in_transit.out": "快递员正在派送您的包裹，请保持电话畅通。",
        "next.delivered": "包裹已签收。如有任何问题，请联系客服。",
        "next.cancelled": "订单已取消，不会再发货。如有疑问，请联系客服。",
        "next.exception": "客服会跟进处理并尽快与您联系，您无需做任何操作。",
        "contact": "客服：{contact}",
        "colon": "：",
        "items": "商品",
        "items_value": "{lines} 种，共 {qty} 件",
        "amount": "订单金额",
        "lookup.title": "查询订单",
        "lookup.intro": "没有收到查询短信？输入订单号和收件人手机号的后四位即可查看订单。",
        "lookup.tail": "收件人手机号后四位",
        "lookup.submit": "查询",
        "lookup.no_match": "订单号或手机号后四位不正确，请核对后重试。",
        "lookup.bad_input": "请输入订单号和手机号的后四位（4 位数字）。",
        "lookup.switch_url": "/track?lang=en",
        "lookup.again": "用订单号和手机号后四位重新查询",
    },
    "en": {
        "title": "Order tracking",
        "order_no": "Order no.",
        "recipient": "Recipient",
        "phone": "Phone",
        "address": "Delivery area",
        "progress": "Progress",
        "next": "What happens next",
        "eta": "Expected delivery",
        "eta_by_carrier": "the carrier's estimate",
        "promised": "Promised by",
        "parcels": "Parcels",
        "waybill": "Waybill no.",
        "carrier": "Carrier",
        "events": "Carrier updates",
        "no_events": "No carrier updates yet.",
        "updated": "Updated",
        "switch_lang": "中文",
        "pending": "Pending",
        "out_for_delivery": "Out for delivery",
        "signed": "Delivered",
        "time_note": "Times are {tz} time",
        "cancelled_banner": "This order has been cancelled.",
        "exception_banner": "There is a problem with the delivery",
        "next.ordered": "We are waiting for your payment to be confirmed. Then the warehouse reserves your items.",
        "next.paid": "Your payment is confirmed. The warehouse is reserving your items.",
        "next.locked": (
            "Your items are reserved and being packed. The waybill number appears here once the parcel leaves."
        ),
        "next.shipped": "Your parcel is packed and waiting to be picked up by the carrier.",
        "next.in_transit": "Your parcel is on its way and will be delivered once it reaches your city.",
        "next.in_transit.out": "A courier is delivering your parcel now. Please keep your phone at hand.",
        "next.delivered": "Your parcel has been delivered. If anything is wrong, please contact customer service.",
        "next.cancelled": (
            "The order is cancelled and will not be shipped. Contact customer service with any questions."
        ),
        "next.exception": (
            "Customer service is looking into it and will contact you soon; you do not need to do anything."
        ),
        "contact": "Customer service: {contact}",
        "colon": ": ",
        "items": "Items",
        "items_value": "{lines} kinds, {qty} pieces",
        "amount": "Order amount",
        "lookup.title": "Find your order",
        "lookup.intro": (
            "No tracking message? Enter the order number and the last four digits of the recipient's mobile."
        ),
        "lookup.tail": "Last four digits of the recipient's mobile",
        "lookup.submit": "Find",
        "lookup.no_match": "The order number or the last four digits are not right. Please check them and try again.",
        "lookup.bad_input": "Enter the order number and the last four digits (4 digits) of the mobile.",
        "lookup.switch_url": "/track",
        "lookup.again": "Find your order with its number and the last four digits of the mobile",
    },
}

ERRORS = {
    "zh": {
        400: ("链接无效", "订单号格式不正确，请检查链接是否完整。"),
        403: ("无法打开此链接", "链接不完整或已被修改。请使用短信或邮件中的原始链接。"),
        404: ("未找到", "没有找到您要查看的页面。"),
        405: ("不支持的请求", "此页面不支持该请求方式。"),
        410: (
            "链接已过期",
            "为保护您的信息，查询链接 {days} 天后失效。请联系客服并提供订单号，我们会为您发送新的查询链接。",
        ),
        413: ("请求过大", "提交的内容太大。"),
        415: ("不支持的表单", "此页面不接受这种格式的提交。"),
        429: ("访问过于频繁", "请 {seconds} 秒后再试。"),
        500: ("暂时无法显示", "系统出了点问题，请稍后再试。"),
        "order_missing": ("暂时查不到此订单", "订单信息可能仍在处理中，请稍后再试。"),
        "csrf": ("表单已失效", "请返回上一页，刷新后重新提交。"),
        "form": ("无法读取表单", "请返回上一页，刷新后重新提交。"),
    },
    "en": {
        400: ("Invalid link", "The order number is not valid. Please check that the link is complete."),
        403: (
            "This link cannot be opened",
            "The link is incomplete or was changed. Please use the original link from your message.",
        ),
        404: ("Not found", "The page you are looking for does not exist."),
        405: ("Not supported", "This page does not support that kind of request."),
        410: (
            "This link has expired",
            "To protect your data, tracking links stop working after {days} days. "
            "Contact customer service with your order number and we will send you a new link.",
        ),
        413: ("Request too large", "What was sent is too large."),
        415: ("Unsupported form", "This page does not accept that kind of form."),
        429: ("Too many requests", "Please try again in {seconds} seconds."),
        500: ("Temporarily unavailable", "Something went wrong on our side. Please try again later."),
        "order_missing": ("Order not found yet", "Your order may still be being processed. Please try again later."),
        "csrf": ("The form has expired", "Go back, reload the page and send it again."),
        "form": ("The form could not be read", "Go back, reload the page and send it again."),
    },
}


def pick_lang(value: str | None) -> str:
    return "en" if value == "en" else "zh"


def carrier_name(code: str | None, lang: str) -> str:
    names = CARRIER_NAMES.get((code or "").lower())
    return (names[0] if lang == "zh" else names[1]) if names else (code or "")
