"""The roles of the business and their Chinese labels: who owns an order's next step
(`responsible_role`) and the built-in alert groups. The one place these labels live."""

from __future__ import annotations

import math

ROLE_LABELS = {
    "sales": "销售",
    "finance": "财务",
    "warehouse": "仓库",
    "logistics": "物流",
    "carrier": "快递公司",
    "customer": "客户",
    "customer_service": "客服",
    "ops_lead": "运营负责人",
    "purchasing": "采购",
    "data": "数据团队",
}


def role_label(role: str | None) -> str:
    """The role's Chinese label (the code itself for a role without one); '—' when there is none."""
    if not role or (isinstance(role, float) and math.isnan(role)):
        return "—"
    return ROLE_LABELS.get(role, role)
