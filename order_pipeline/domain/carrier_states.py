"""Kuaidi100's parcel states: what each means for the order, and how it reads in Chinese.

The one place these facts live: the carrier protocol, the stage derivation, the pages and the
demo read them from here.
"""

from __future__ import annotations

STATE_CATEGORY: dict[int, str] = {
    0: "in_transit",
    1: "shipped",  # picked up by the courier
    2: "exception",
    3: "signed",
    4: "exception",
    5: "in_transit",
    6: "exception",
    7: "in_transit",
    8: "in_transit",
    10: "in_transit",
    11: "in_transit",
    12: "in_transit",
    13: "in_transit",
    14: "exception",
}

STATE_LABEL: dict[int, str] = {
    0: "在途",
    1: "揽收",
    2: "疑难",
    3: "签收",
    4: "退签",
    5: "派件",
    6: "退回",
    7: "转投",
    8: "清关",
    10: "待清关",
    11: "清关中",
    12: "已清关",
    13: "清关异常",
    14: "拒签",
    # With resultv2=4 Kuaidi100 may answer a finer state; `base_state` maps it to one above.
    101: "已下单",
    102: "待揽收",
    103: "已揽收",
    1001: "到达派件城市",
    1002: "干线",
    1003: "转递",
    201: "超时未签收",
    202: "超时未更新",
    203: "拒收",
    204: "派件异常",
    205: "柜或驿站超时未取",
    206: "无法联系",
    207: "超区",
    208: "滞留",
    209: "破损",
    210: "销单",
    301: "本人签收",
    302: "派件异常后签收",
    303: "代签",
    304: "投柜或站签收",
    401: "已销单",
    501: "投柜或驿站",
}


UNKNOWN_CATEGORY = "in_transit"  # an unknown state never claims delivery or trouble

SIGNED_STATE = 3
OUT_FOR_DELIVERY_STATE = 5
EXCEPTION_STATES = frozenset(s for s, c in STATE_CATEGORY.items() if c == "exception")
TRANSIT_STATES = frozenset(s for s, c in STATE_CATEGORY.items() if c == "in_transit")


def base_state(state: int) -> int:
    """The basic state (0-14) behind a finer resultv2 state: 304 -> 3, 1002 -> 0."""
    if 1000 <= state <= 1099:
        return 0
    if 100 <= state <= 999:
        return state // 100
    return state


def category(state: int) -> str:
    return STATE_CATEGORY.get(base_state(state), UNKNOWN_CATEGORY)


def label(state: int) -> str:
    return STATE_LABEL.get(state) or STATE_LABEL.get(base_state(state)) or f"状态{state}"


def exception_reason(state: int, latest_context: str | None) -> str | None:
    """Why a parcel is in trouble, e.g. "拒签: 收件人拒收", or None when it is not."""
    if category(state) != "exception":
        return None
    return f"{label(state)}: {latest_context}" if latest_context else label(state)


# Kuaidi100 carrier codes as a customer reads them: (Chinese, English).
CARRIER_NAMES = {
    "shunfeng": ("顺丰速运", "SF Express"),
    "zhongtong": ("中通快递", "ZTO Express"),
    "yuantong": ("圆通速递", "YTO Express"),
    "yunda": ("韵达快递", "Yunda Express"),
    "shentong": ("申通快递", "STO Express"),
    "jtexpress": ("极兔速递", "J&T Express"),
    "ems": ("EMS", "EMS"),
    "youzhengguonei": ("邮政快递包裹", "China Post"),
    "jd": ("京东物流", "JD Logistics"),
    "debangwuliu": ("德邦快递", "Deppon"),
    "debangkuaidi": ("德邦快递", "Deppon"),
    "fengwang": ("丰网速运", "Fengwang"),
    "baishiwuliu": ("百世快运", "Best Express"),
    "danniao": ("丹鸟", "Danniao"),
}
