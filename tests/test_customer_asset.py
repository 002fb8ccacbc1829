"""The `customer_notifications` asset, its failure-rate check and the sensor for messages that waited."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from helpers import NOW, D, H, M, make_config, materialization_metadata, order, publish_rows, run_at

from assets.notifications import CUSTOMER_NOTIFICATIONS, customer_notifications_asset, failure_rate_check
from order_pipeline.contract.config import load_config
from order_pipeline.contract.customer_schema import customer_notifications, customer_outbox
from order_pipeline.contract.schema import pipeline_state
from order_pipeline.definitions import build_definitions
from order_pipeline.notify import ledger
from order_pipeline.notify.sender import CURSOR
from order_pipeline.warehouse.engine import Warehouse
from resources.messaging import CustomerMessaging
from resources.warehouse import PipelineClock, WarehouseResource
from sensors.notifications import notification_sensor

WEB = {"base_url": "https://track.example.com", "link_secret_env": "TEST_ASSET_LINK_SECRET"}
OUTBOX = {"channels": {"outbox": {"type": "outbox"}}, "events": {"order_created": {}, "delivered": {}}}


def _frame(engine, table) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(table), conn)


def test_the_demo_run_messages_its_customers_once_and_says_so_in_the_metadata(materialized_demo):
    meta = materialization_metadata(materialized_demo.instance, CUSTOMER_NOTIFICATIONS.to_user_string())
    ledger_rows = _frame(materialized_demo.engine, customer_notifications)
    box = _frame(materialized_demo.engine, customer_outbox)
    sent = ledger_rows[ledger_rows["status"] == "sent"]
    assert meta["enabled"] is True and meta["sent"] == len(sent) == len(box) > 0
    assert not ledger_rows.duplicated(["order_no", "event_key"]).any()
    assert box["message_key"].is_unique
    assert meta["failure_rate"] == 0.0
    table = meta["by_event_and_channel"]
    assert sum(r.data["messages"] for r in table.records if r.data["status"] == "sent") == len(sent)


def test_a_second_run_sends_nothing_new_and_a_night_run_holds_what_is_new(materialized_company, tmp_path):
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(str(config.warehouse_url.resolve())).engine
    before = len(_frame(engine, customer_outbox))
    CustomerMessaging.forget()
    run_at(config, now=NOW + M)
    assert len(_frame(engine, customer_outbox)) == before
    CustomerMessaging.forget()
    with engine.begin() as conn:  # as if the day's new orders were first seen at 22:00
        conn.execute(customer_notifications.delete().where(customer_notifications.c.event == "order_created"))
        conn.execute(pipeline_state.delete().where(pipeline_state.c.key == CURSOR))
    run_at(config, now=NOW + 12 * H)
    rows = _frame(engine, customer_notifications)
    held = rows[rows["status"] == "held"]
    assert len(held) and set(held["reason"]) == {"quiet hours"}
    assert len(_frame(engine, customer_outbox)) == before
    engine.dispose()


def _resources(engine, now):
    warehouse = WarehouseResource(url=str(engine.url))
    return {
        "warehouse": warehouse,
        "clock": PipelineClock(now_at=now.isoformat()),
        "messaging": CustomerMessaging(warehouse=warehouse),
    }


def test_the_check_fails_when_too_many_messages_failed(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("TEST_ASSET_LINK_SECRET", "asset-link-secret-0123456789")
    config = make_config(tmp_path, str(engine.url), web=WEB, notifications={**OUTBOX, "max_failure_rate": 0.1})
    publish_rows(
        engine, [order(f"SO-{i}", "ordered", ordered_at=NOW - H, customer_phone=f"1380000{i:04d}") for i in range(9)]
    )
    ledger.ensure_schema(engine)
    with engine.begin() as conn:
        ledger.record(conn, [{"order_no": "GONE", "event": "order_created", "event_key": "order_created"}], NOW)
        conn.execute(customer_notifications.update().values(status="failed", reason="unreachable"))
    CustomerMessaging.forget()
    result = dg.materialize(
        [customer_notifications_asset(config), failure_rate_check(config)],
        resources=_resources(engine, NOW),
    )
    [check] = result.get_asset_check_evaluations()
    assert check.metadata["failed"].value == 1 and check.metadata["tried"].value == 10
    assert check.passed is True  # 1 in 10 is the threshold itself
    with engine.begin() as conn:
        ledger.record(conn, [{"order_no": "GONE-2", "event": "order_created", "event_key": "order_created"}], NOW)
        conn.execute(
            customer_notifications.update()
            .where(customer_notifications.c.order_no == "GONE-2")
            .values(status="invalid")
        )
    result = dg.materialize(
        [customer_notifications_asset(config), failure_rate_check(config)], resources=_resources(engine, NOW + M)
    )
    [check] = result.get_asset_check_evaluations()
    assert check.passed is False and check.metadata["failure_rate"].value == round(2 / 11, 4)


def test_the_sensor_runs_the_asset_when_a_held_message_falls_due(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("TEST_ASSET_LINK_SECRET", "asset-link-secret-0123456789")
    config = make_config(tmp_path, str(engine.url), web=WEB, notifications=OUTBOX)
    sensor = notification_sensor(config)
    night = NOW + 12 * H
    publish_rows(engine, [order("SO-1", "ordered", ordered_at=night - H)], now=night)
    CustomerMessaging.forget()
    dg.materialize([customer_notifications_asset(config)], resources=_resources(engine, night))
    with engine.connect() as conn:
        due = ledger.next_due(conn)
    assert due is not None and due > night

    def tick(now) -> dg.RunRequest | dg.SkipReason:
        with dg.build_sensor_context(resources=_resources(engine, now)) as context:
            answer = sensor(context)
        assert isinstance(answer, dg.RunRequest | dg.SkipReason)
        return answer

    def run_key(now) -> str | None:
        answer = tick(now)
        assert isinstance(answer, dg.RunRequest)
        return answer.run_key

    assert isinstance(tick(due - M), dg.SkipReason)
    request = tick(due)
    assert isinstance(request, dg.RunRequest)
    assert request.asset_selection == [CUSTOMER_NOTIFICATIONS]
    assert run_key(due + M) == request.run_key  # one run for one due time
    assert run_key(due + 10 * M) != request.run_key  # still waiting ten minutes on: asked again


def test_without_notifications_the_asset_is_there_and_says_it_is_off(tmp_path, engine):
    config = make_config(tmp_path, str(engine.url))
    defs = build_definitions(config)
    assert defs.resolve_assets_def(CUSTOMER_NOTIFICATIONS).group_names_by_key[CUSTOMER_NOTIFICATIONS] == "customers"
    CustomerMessaging.forget()
    result = dg.materialize([customer_notifications_asset(config)], resources=_resources(engine, NOW))
    [mat] = result.asset_materializations_for_node("customer_notifications")
    assert mat.metadata["enabled"].value is False
    with dg.build_sensor_context(resources=_resources(engine, NOW + D)) as context:
        answer = notification_sensor(config)(context)
    assert isinstance(answer, dg.SkipReason) and "off" in str(answer.skip_message)
