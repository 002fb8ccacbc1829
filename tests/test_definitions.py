"""The full code location, loaded from the demo company's config: wiring, validation, and the demo's alerts."""

from __future__ import annotations

from datetime import timedelta

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
from order_pipeline.definitions import build_definitions
from order_pipeline.runner import run_pipeline
from resources.alerting import CLI_RETRIES, AlertingResource
from resources.warehouse import WarehouseResource

RULES = ("paid_not_locked", "stock_below_safety", "stuck_parcel", "promise_due_not_shipped")


@pytest.fixture(autouse=True)
def fresh_runtime():
    yield
    AlertingResource.forget()
    WarehouseResource.dispose_all()


@pytest.fixture
def config(demo_company):
    return load_config(demo_company / "order_pipeline.yaml")


def test_the_demo_definitions_load_and_validate(config, monkeypatch):
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    sensors = {s.name for s in repo.sensor_defs}
    assert {
        "source_changes",
        "carrier_push_received",
        "follow_sources",
        "alert_dispatch",
        "run_failure_alerts",
    } <= sensors
    assert not any(name.endswith("_source_changed") for name in sensors)  # one sensor watches every source
    assert [s.name for s in repo.schedule_defs] == ["carrier_poll"]
    assert repo.get_schedule_def("carrier_poll").cron_schedule == "0 */2 * * *"

    graph = repo.asset_graph
    for key in ("unified_orders", "order_tracking_snapshot", "order_tracking_events", "raw_tracking"):
        assert graph.get(dg.AssetKey(key)).automation_condition is not None, key
    assert graph.get(dg.AssetKey("raw_orders")).automation_condition is None  # loaded by its sensor
    assert graph.get(dg.AssetKey("raw_inventory")).freshness_policy is not None

    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("unified_orders", f"sla_{rule}") for rule in RULES} <= checks
    assert not any(name == "freshness_check" for _, name in checks)  # one mechanism: the policies below
    for key in ("raw_orders", "raw_shipments", "raw_payments", "raw_inventory", "raw_reservations", "raw_tracking"):
        assert graph.get(dg.AssetKey(key)).freshness_policy is not None, key

    # What `dagster dev` and `dagster definitions validate` load: the module's lazy `defs`.
    monkeypatch.setenv(CONFIG_ENV, str(config.path))
    dg.Definitions.validate_loadable(definitions.defs())


def window(graph, key: str) -> timedelta:
    policy = graph.get(dg.AssetKey(key)).freshness_policy
    assert policy is not None, key
    return policy.fail_window.to_timedelta()


def test_freshness_in_the_ui_means_the_pipeline_looked_not_that_the_source_moved(config):
    graph = build_definitions(config).resolve_asset_graph()
    # A quiet source is reconciled every hour (a run that materializes its raw asset): red means no look for that long.
    assert config.reconcile_every == timedelta(hours=1) and config.carrier.poll_interval == timedelta(hours=2)
    for key in ("raw_orders", "raw_order_lines", "raw_payments", "raw_inventory"):
        assert window(graph, key) == timedelta(hours=1, minutes=15), key
    assert window(graph, "raw_tracking") == timedelta(hours=2, minutes=15)
    assert window(graph, "order_tracking_snapshot") == timedelta(hours=1, minutes=15)  # what the apps read
    # Each watched source has a check its sensor reports: can the pipeline read it? Runs leave it out.
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("raw_orders", "source_reachable") in checks and ("raw_order_lines", "source_reachable") not in checks
    repo = build_definitions(config).get_repository_def()
    steps = {node.name for node in repo.get_job("source_change").nodes}
    assert "source_reachable" not in steps and {"raw_orders", "sla_rules"} <= steps


def test_sla_checks_say_they_are_business_slas_not_data_quality(config):
    graph = build_definitions(config).resolve_asset_graph()
    for key in graph.asset_check_keys:
        if key.name.startswith("sla_"):
            assert (graph.get_check_spec(key).description or "").startswith("Business SLA, not data quality"), key


def test_a_source_is_owned_by_the_data_team_and_by_whoever_hears_when_it_goes_stale(config):
    freshness = {"inventory": {"max_age": "30m", "owner": "warehouse"}}
    owned = type(config)(**{**config.__dict__, "sections": {**config.sections, "freshness": freshness}})
    graph = build_definitions(owned).resolve_asset_graph()
    assert graph.get(dg.AssetKey("raw_inventory")).owners == ["team:data", "team:warehouse"]
    assert graph.get(dg.AssetKey("raw_orders")).owners == ["team:data"]
    assert graph.get(dg.AssetKey("order_tracking_snapshot")).owners == ["team:data"]


def test_a_full_run_loads_side_by_side_and_a_change_run_in_one_process(config):
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    assert repo.get_job("order_pipeline").executor_def.name == "multiprocess"
    sensor = repo.get_sensor_def("source_changes")
    assert sensor.minimum_interval_seconds == 5
    assert sensor.job_name is not None
    job = repo.get_job(sensor.job_name)  # the sensor's run: the load and what follows it, in one process
    assert job.executor_def.name == "in_process"
    targeted = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"raw_orders", "raw_order_lines", "unified_orders", "order_tracking_snapshot"} <= targeted
    assert {"customer_notifications", "order_alerts", "raw_payments"} <= targeted  # each source's run is its own


def test_the_sensors_and_schedules_launch_named_jobs(config):
    repo = build_definitions(config).get_repository_def()
    launched = {s.name: s.job_name for s in repo.sensor_defs if s.targets}
    launched |= {s.name: s.job_name for s in repo.schedule_defs}
    assert launched == {
        "source_changes": "source_change",
        "carrier_push_received": "carrier_push",
        "customer_messages_due": "customer_messages",
        "carrier_poll": "carrier_poll",
    }
    for name in launched.values():
        assert name and repo.get_job(name).description, name
    # A change run of one source selects that source's assets; a push run, only what follows a push.
    assert "raw_tracking" not in {
        k.to_user_string() for k in repo.get_job("carrier_push").asset_layer.selected_asset_keys
    }


def with_channels(config, channels: dict):
    return type(config)(**{**config.__dict__, "sections": {**config.sections, "channels": channels}})


def test_a_bad_channel_fails_when_the_definitions_load_and_an_unset_secret_does_not(config, monkeypatch):
    monkeypatch.delenv("WECOM_WAREHOUSE_URL", raising=False)
    with pytest.raises(ConfigError) as err:
        build_definitions(with_channels(config, {"wecom_warehouse": {"type": "wecom", "webhook_url_env": "no such"}}))
    assert err.value.entry == "channels.wecom_warehouse.webhook_url_env"
    assert "not an environment variable name" in err.value.problem
    with pytest.raises(ConfigError) as err:
        build_definitions(with_channels(config, {"wecom_warehouse": {"type": "wecom", "webhook_url": "https://x"}}))
    assert err.value.entry == "channels.wecom_warehouse.webhook_url" and "webhook_url_env" in err.value.fix

    # The variable's value is read when the channel sends (and by `order-pipeline check`), not at load.
    unset = with_channels(config, {"wecom_warehouse": {"type": "wecom", "webhook_url_env": "WECOM_WAREHOUSE_URL"}})
    dg.Definitions.validate_loadable(build_definitions(unset))


def test_the_demo_raises_each_rule_as_a_check_and_as_an_alert(config, monkeypatch):
    with dg.instance_for_test() as instance:
        outcome = run_pipeline(config, instance, now=NOW.isoformat(), full_refresh=True)
        assert outcome.success, outcome.failures
        keys = [dg.AssetCheckKey(dg.AssetKey("unified_orders"), f"sla_{rule}") for rule in RULES]
        records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        for key in keys:
            entry = records[key].event
            assert entry is not None and entry.dagster_event is not None, key.name
            evaluation = entry.dagster_event.event_specific_data
            assert isinstance(evaluation, dg.AssetCheckEvaluation), key.name
            assert evaluation.passed is False, key.name  # the demo breaks every rule
            offending, table = evaluation.metadata["offending"].value, evaluation.metadata["first_offending"]
            assert isinstance(offending, int) and offending >= 1
            assert isinstance(table, dg.TableMetadataValue)
            first = table.records[0].data  # a table of the offenders
            assert ("order_no" if key.name != "sla_stock_below_safety" else "sku") in first

    warehouse = WarehouseResource(url=warehouse_of(config))
    engine = warehouse.engine
    alerting, dispatcher = AlertingResource(warehouse=warehouse, retries=CLI_RETRIES).runtime(config)
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
    assert "告警 alerts at 2026-11-25T10:00:00+08:00" in result.output  # in the business's zone
    assert "+00:00" not in result.output
    assert "→ warehouse via outbox" in result.output and "→ customer_service via outbox" in result.output
    listed = cli.invoke(
        main, ["alerts", "--config", str(config.path), "--now", NOW.isoformat(), "--rule", "stuck_parcel"]
    )
    assert listed.exit_code == 0, listed.output
    assert "stuck_parcel (" in listed.output and "high risk" in listed.output
    again = cli.invoke(main, ["run", "--config", str(config.path), "--now", NOW.isoformat()])
    assert "queued 0 messages" in again.output  # nothing is sent twice


def test_the_projects_log_lines_reach_the_run_event_log(config, tmp_path, monkeypatch):
    """The instance the CLI creates captures `order_pipeline.*` loggers, as deploy/dagster.yaml does."""
    import logging
    from pathlib import Path

    import yaml

    from order_pipeline import runner

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))

    @dg.asset
    def speaks():
        logging.getLogger("order_pipeline.pipeline.publish").warning("VACUUM after the rebuild failed: disk full")

    with runner.dagster_instance(config) as instance:
        result = dg.materialize([speaks], instance=instance)
        logged = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("VACUUM after the rebuild failed: disk full" in m for m in logged)
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"
    assert yaml.safe_load(shipped.read_text())["python_logs"] == yaml.safe_load(runner.INSTANCE_YAML)["python_logs"]


def test_a_change_run_sends_its_alerts_itself_and_the_full_job_leaves_them_to_its_caller(config, monkeypatch):
    from assets.alerts import ORDER_ALERTS

    defs = build_definitions(config, now=NOW.isoformat())
    repo = defs.get_repository_def()
    assert ORDER_ALERTS not in repo.get_job("order_pipeline").asset_layer.executable_asset_keys
    run_pipeline(config, dg.DagsterInstance.ephemeral(), now=NOW.isoformat(), full_refresh=True)
    engine = WarehouseResource(url=warehouse_of(config)).engine
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(order_alerts)).scalar() == 0
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(asset_selection=[ORDER_ALERTS])
    [mat] = result.asset_materializations_for_node("order_alerts")
    meta = {k: int(v.value) for k, v in mat.metadata.items()}  # pyright: ignore[reportArgumentType]  # all counts
    with engine.connect() as conn:
        opened = conn.execute(sa.select(sa.func.count()).select_from(order_alerts)).scalar_one()
        sent = conn.execute(sa.select(sa.func.count()).select_from(alert_outbox)).scalar_one()
    assert opened == sum(v for k, v in meta.items() if k.startswith("breaching_")) + meta["stale_sources"] > 0
    assert meta["delivered"] == meta["queued"] > 0 and sent > 0
