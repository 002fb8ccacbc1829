"""What the channel tests share: a message, a mock transport answering in turn, a sleep that only records."""

from __future__ import annotations

import httpx

from order_pipeline.alerts.channels.message import AlertMessage

MSG = AlertMessage(
    title="支付超 2 小时未锁库",
    body_markdown="订单 **SO-1001** 已支付 2.5 小时，库存未锁定",
    body_text="订单 SO-1001 已支付 2.5 小时，库存未锁定",
    severity="critical",
    link="https://ops.example.com/order/SO-1001",
    keys=("paid_not_locked:SO-1001",),
)


def mock(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering in turn with `answers` (the last one repeats), recording requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)
