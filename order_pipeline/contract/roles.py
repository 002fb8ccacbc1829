"""The roles of the business and their Chinese labels: who owns an order's next step
(`responsible_role`) and the built-in alert groups. The one place these labels live."""

from __future__ import annotations

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
