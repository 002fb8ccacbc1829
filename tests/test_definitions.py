"""The full code location, loaded from the demo company's config: wiring, validation, and the demo's alerts."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from helpers import NOW, warehouse_of

from order_pipeline import definitions
from order_pipeline.cli import main
from order_pipeline.contract.config import CONFIG_ENV, ConfigError, load_config
from order_pipeline.contract.schema import alert_outbox, order_alerts
from order_pipeline.definitions import NOW_ENV, alert_runtime, build_definitions
from order_pipeline.runner import run_pipeline
from order_pipeline.warehouse.engine import Warehouse
from sensors import runtime
from sensors.runtime import CLI_RETRIES

RULES = ("paid_not_locked", "stock_below_safety", "stuck_parcel", "promise_due_not_shipped")


@pytest.fixture(autouse=True)
def fresh_runtime():
    yield
    runtime.forget()


@pytest.fixture
def config(demo_company):
    return load_config(demo_company / "order_pipeline.yaml")


def test_the_demo_definitions_load_and_validate(config, monkeypatch):
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    sensors = {s.name for s in repo.sensor_defs}
    assert {
        "orders_source_changed",
        "payments_source_changed",
        "inventory_source_changed",
        "reservations_source_changed",
        "shipments_source_changed",
        "carrier_push_received",
        "follow_sources",
        "raw_asset_freshness_checks",
        "alert_dispatch",
        "run_failure_alerts",
    } <= sensors
    assert "order_lines_source_changed" not in sensors  # lines ride along with orders
    assert [s.name for s in repo.schedule_defs] == ["carrier_poll"]
    assert repo.get_schedule_def("carrier_poll").cron_schedule == "0 */2 * * *"

    graph = repo.asset_graph
    for key in ("unified_orders", "order_tracking_snapshot", "order_tracking_events", "raw_tracking"):
        assert graph.get(dg.AssetKey(key)).automation_condition is not None, key
    assert graph.get(dg.AssetKey("raw_orders")).automation_condition is None  # loaded by its sensor
    assert graph.get(dg.AssetKey("raw_inventory")).freshness_policy is not None

    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("unified_orders", f"sla_{rule}") for rule in RULES} <= checks
    assert {
        ("raw_orders", "freshness_check"),
        ("raw_shipments", "freshness_check"),
        ("raw_payments", "freshness_check"),
        ("raw_inventory", "freshness_check"),
        ("raw_reservations", "freshness_check"),
        ("raw_tracking", "freshness_check"),
    } <= checks

    # What `dagster dev` and `dagster definitions validate` load: the module's lazy `defs`.
    monkeypatch.setenv(CONFIG_ENV, str(config.path))
    dg.Definitions.validate_loadable(definitions.defs())


def test_a_bad_channel_fails_when_the_definitions_load(config, monkeypatch):
    monkeypatch.delenv("WECOM_WAREHOUSE_URL", raising=False)
    bad = type(config)(
        **{
            **config.__dict__,
            "sections": {
                **config.sections,
                "channels": {"wecom_warehouse": {"type": "wecom", "webhook_url_env": "WECOM_WAREHOUSE_URL"}},
            },
        }
    )
    with pytest.raises(ConfigError) as err:
        build_definitions(bad)
    assert err.value.entry == "channels.wecom_warehouse.webhook_url_env"
    assert "WECOM_WAREHOUSE_URL is not set" in err.value.problem


def test_the_demo_raises_each_rule_as_a_check_and_as_an_alert(config, monkeypatch):
    monkeypatch.setenv(NOW_ENV, NOW.isoformat())
    with dg.instance_for_test() as instance:
        outcome = run_pipeline(config, instance, full_refresh=True)
        assert outcome.success, outcome.failures
        keys = [dg.AssetCheckKey(dg.AssetKey("unified_orders"), f"sla_{rule}") for rule in RULES]
        records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        for key in keys:
            entry = records[key].event
            assert entry is not None and entry.dagster_event is not None, key.name
            evaluation = entry.dagster_event.event_specific_data
            assert isinstance(evaluation, dg.AssetCheckEvaluation), key.name
            assert evaluation.passed is False, key.name  # the demo breaks every rule
            offending, first = evaluation.metadata["offending"].value, evaluation.metadata["first_offending"].value
            assert isinstance(offending, int) and offending >= 1
            assert isinstance(first, str) and "|" in first  # a table of the offending orders

    engine = Warehouse(warehouse_of(config)).engine
    alerting, dispatcher = alert_runtime(config, engine)
    assert dispatcher.retries == CLI_RETRIES > 0  # no later tick retries for `order-pipeline run`
    ev = alerting.evaluate(NOW)
    assert all(ev.breaching[rule] >= 1 for rule in RULES), ev.breaching
    drained = dispatcher.drain(NOW)
    assert drained.failed == 0 and drained.delivered >= 4
    with engine.connect() as conn:
        rules = set(conn.execute(sa.select(order_alerts.c.rule_id).distinct()).scalars())
        sent = pd.read_sql(sa.select(alert_outbox), conn)
    assert set(RULES) <= rules
    for title in ("已付款超过2小时未锁库存", "库存低于安全库存", "包裹超过48小时无物流更新", "承诺送达不足1天仍未发货"):
        assert sent["title"].str.contains(title).any(), title


def test_cli_run_sends_and_prints_the_alerts_then_lists_them(config, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    cli = CliRunner()
    result = cli.invoke(main, ["run", "--config", str(config.path), "--now", NOW.isoformat(), "--full-refresh"])
    assert result.exit_code == 0, result.output
    assert "告警 alerts at 2026-11-25T02:00:00+00:00" in result.output
    assert "→ warehouse via outbox" in result.output and "→ customer_service via outbox" in result.output
    listed = cli.invoke(
        main, ["alerts", "--config", str(config.path), "--now", NOW.isoformat(), "--rule", "stuck_parcel"]
    )
    assert listed.exit_code == 0, listed.output
    assert "stuck_parcel (" in listed.output and "high risk" in listed.output
    again = cli.invoke(main, ["run", "--config", str(config.path), "--now", NOW.isoformat()])
    assert "queued 0 messages" in again.output  # nothing is sent twice
