"""SLA rules as configuration: condition -> action, evaluated as SQL inside the warehouse.

A rule names a scope (one row per order, or one row per SKU), conditions over that
scope's fields, a severity, who to notify and a message template:

    rules:
      paid_not_locked:
        title: 已付款超过2小时未锁库存
        scope: order
        when:
          stage: {eq: paid}            # 支付确认: paid, stock not locked, not shipped
          paid_at: {older_than: 2h}    # strictly more than 2 h before now
        waited_from: paid_at
        severity: warning
        notify: [warehouse]
        message: 订单 {order_no} 付款已 {waited}，库存仍未锁定

`rules:` entries are merged over the four defaults (`default_rules.yaml`) by id: a default id
overrides only the settings it gives (`enabled: false` switches it off); any other id is a new rule.

Every condition compiles to a SQLAlchemy Core expression, so a rule runs as one SELECT on
SQLite and PostgreSQL alike; no order is looked at in Python. Operators:

| operator      | value                    | meaning                                         |
|---------------|--------------------------|-------------------------------------------------|
| eq, ne        | value or {field: name}   | equal / not equal (ne keeps NULLs out)          |
| lt, le, gt, ge| value or {field: name}   | compare numbers, dates, times                   |
| in, not_in    | list of values           | one of / none of                                |
| is_null       | true or false            | the field is empty / is set                     |
| older_than    | duration (2h, 48h, 1d)   | time field strictly before now - duration       |
| newer_than    | duration                 | time field at or after now - duration           |
| within_next   | duration                 | time field at or before now + duration; for a   |
|               |                          | date field: on or before today + whole days     |

`model` holds the parsed form (Rule, Condition) and the fields of each scope, `parser` reads a
`rules:` section into it, and `sql` compiles a rule into the SELECT of its offending rows.
"""
