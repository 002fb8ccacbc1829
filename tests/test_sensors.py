"""Sensors against a real Dagster instance: source changes, the alert sensor across ticks (dedup,
cool-down, escalation, resolution, a crash between send and record), run failures, carrier pushes."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.test_utils import create_run_for_test
from helpers import (
    GROUPS,
    NOW,
    TZ,
    H,
    M,
    S,
    ledger_row,
    make_config,
    order,
    outbox,
    paid_order,
    publish_rows,
    resolved,
    sources_company,
    warehouse_of,
)
from sqlalchemy import event as sa_event

from assets import sources as source_assets
from assets.alerts import order_alerts_asset
from assets.sources import raw_source_asset
from order_pipeline import runner
from order_pipeline.alerts import queue as alert_queue_ops
from order_pipeline.alerts.channels.wecom import WeComRobot
from order_pipeline.alerts.dispatch import Dispatcher
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.contract.config import ConfigError, Secret, SourceConfig
from order_pipeline.contract.schema import (
    BATCH,
    RAW_TABLES,
    alert_deliveries,
    alert_queue,
    raw_tracking,
)
from order_pipeline.sources import engines as source_engines
from order_pipeline.warehouse.engine import Warehouse
from order_pipeline.warehouse.state import high_water_mark_key, reconciled_key, set_state
from resources.alerting import AlertingResource
from resources.warehouse import PipelineClock, SourceConnection, SourceDatabases, WarehouseResource
from sensors.alerts import AlertCursor, alert_sensor, run_failure_sensor, run_success_sensor
from sensors.carrier import PUSH_TRIGGER, TRIGGER_TAG, carrier_push_sensor, poll_cron
from sensors.jobs import DOWNSTREAM
from sensors.sources import MAX_RETRIES, Watched, source_change_sensor, source_changes_sensor


@pytest.fixture(autouse=True)
def fresh_runtime():
    yield
    AlertingResource.forget()
    WarehouseResource.dispose_all()
    source_engines.dispose_all()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def skip_message(data) -> str:
    """Why a tick skipped; a tick that did not skip fails the test."""
    assert data.skip_message is not None, "the tick did not skip"
    return data.skip_message


def resources(url: str, now: datetime) -> dict:
    warehouse = WarehouseResource(url=url)
    return {
        "warehouse": warehouse,
        "clock": PipelineClock(now_at=now.isoformat()),
        "alerting": AlertingResource(warehouse=warehouse),
    }


# --- source-change sensors ----------------------------------------------------------------------------


def erp(tmp_path):
    path = tmp_path / "erp.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE T_SAL_ORDER (FBillNo TEXT, FModifyDate TEXT)")
    return path


def orders_source(path, query: bool = False) -> SourceConfig:
    columns = {"order_no": "FBillNo", "updated_at": "FModifyDate"}
    if query:
        return SourceConfig(
            "orders",
            Secret(value=f"sqlite:///{path}"),
            None,
            "SELECT FBillNo, FModifyDate FROM T_SAL_ORDER WHERE FBillNo <> ''",
            columns,
            TZ,
        )
    return SourceConfig("orders", Secret(value=f"sqlite:///{path}"), "T_SAL_ORDER", None, columns, TZ)


@pytest.mark.parametrize("query", [False, True])
def test_source_sensor_requests_a_load_only_when_the_watermark_moves(tmp_path, instance, query):
    path = erp(tmp_path)
    sensor = source_change_sensor(orders_source(path, query), followers=["order_lines"])
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.create_schema()
    res = {
        "sources": SourceDatabases(sources={"orders": SourceConnection(url=f"sqlite:///{path}")}),
        "warehouse": WarehouseResource(url=str(warehouse.engine.url)),
        "clock": PipelineClock(now_at=NOW.isoformat()),
        "alerting": AlertingResource(warehouse=WarehouseResource(url=str(warehouse.engine.url))),
    }

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=res) as context:
            return sensor.evaluate_tick(context)

    def loaded(mark: str) -> None:  # what a successful first load of raw_orders leaves behind
        with warehouse.engine.begin() as conn:
            set_state(conn, high_water_mark_key("orders"), mark, NOW)
            set_state(conn, reconciled_key("orders"), NOW.isoformat(), NOW)

    empty = tick(None)
    assert not empty.run_requests and "no rows yet" in skip_message(empty)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO T_SAL_ORDER VALUES (?, ?)", [("SO1", "2026-11-25 09:58:00"), ("SO2", "2026-11-25 09:59:30")]
        )
    first = tick(None)
    [request] = first.run_requests or []
    assert request.run_key == "orders:2026-11-25 09:59:30"
    assert request.asset_selection == [dg.AssetKey("raw_orders"), dg.AssetKey("raw_order_lines"), *DOWNSTREAM]
    assert json.loads(first.cursor or "")["asked"] == {"orders": "orders:2026-11-25 09:59:30"}
    assert skip_message(tick(first.cursor)) == "orders: waiting for the run of orders:2026-11-25 09:59:30"

    loaded("2026-11-25 09:59:30")
    same = tick(first.cursor)
    assert not same.run_requests
    assert same.skip_message == "orders: no new rows in orders since 2026-11-25 09:59:30 (Asia/Shanghai)"

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE T_SAL_ORDER SET FModifyDate = '2026-11-25 10:00:05' WHERE FBillNo = 'SO1'")
    moved = tick(same.cursor or first.cursor)
    assert [r.run_key for r in moved.run_requests or []] == ["orders:2026-11-25 10:00:05"]


def test_one_sensor_watches_every_source_and_one_it_cannot_read_holds_up_no_other(tmp_path, instance):
    path = erp(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO T_SAL_ORDER VALUES ('SO1', '2026-11-25 09:58:00')")
    payments = SourceConfig(
        "payments", Secret(value=f"sqlite:///{tmp_path / 'gone.db'}"), "收款单", None, {"updated_at": "修改时间"}, TZ
    )
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.create_schema()
    config = make_config(tmp_path, str(warehouse.engine.url), **GROUPS)
    sensor = source_changes_sensor([Watched(orders_source(path)), Watched(payments)], config=config)
    res = {
        "sources": SourceDatabases(
            sources={
                "orders": SourceConnection(url=f"sqlite:///{path}"),
                "payments": SourceConnection(url=f"sqlite:///{tmp_path / 'gone.db'}"),
            }
        ),
        "warehouse": WarehouseResource(url=str(warehouse.engine.url)),
        "alerting": AlertingResource(warehouse=WarehouseResource(url=str(warehouse.engine.url))),
    }

    def tick(cursor, at):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={**res, "clock": PipelineClock(now_at=at.isoformat())}
        ) as context:
            return sensor.evaluate_tick(context)

    def checks(data) -> list[tuple[str, bool]]:
        return [
            (e.asset_key.to_user_string(), e.passed)
            for e in data.asset_events
            if isinstance(e, dg.AssetCheckEvaluation)
        ]

    first = tick(None, NOW)
    [request] = first.run_requests or []  # the orders' load goes ahead; the unreadable payments wait
    assert request.tags["order_pipeline/source"] == "orders"
    assert checks(first) == [("raw_payments", False)]  # its raw asset turns red at once
    [failed] = [e for e in first.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert failed.severity == dg.AssetCheckSeverity.ERROR and "no such table" in str(failed.metadata["error"].value)
    assert outbox(warehouse.engine).empty  # not yet an alert: a blip passes unnoticed

    still = tick(first.cursor, NOW + timedelta(seconds=55))
    assert "payments: cannot be read (" in skip_message(still) and not checks(still)
    assert outbox(warehouse.engine).empty
    down = tick(still.cursor, NOW + timedelta(minutes=1))  # unreadable for a minute: the data team hears
    sent = outbox(warehouse.engine)
    assert sent["channel"].tolist() == ["data_box"]
    assert "数据源无法连接 payments" in sent["title"].iloc[0] and "no such table" in sent["body"].iloc[0]
    for minutes in (2, 30, 119):  # once per cool-down (2 h)
        down = tick(down.cursor, NOW + timedelta(minutes=minutes))
    assert len(outbox(warehouse.engine)) == 1
    down = tick(down.cursor, NOW + timedelta(hours=2, minutes=1))
    assert len(outbox(warehouse.engine)) == 2

    with sqlite3.connect(tmp_path / "gone.db") as conn:
        conn.execute("CREATE TABLE 收款单 (修改时间 TEXT)")
        conn.execute("INSERT INTO 收款单 VALUES ('2026-11-25 09:00:00')")
    back = tick(down.cursor, NOW + timedelta(hours=2, minutes=2))
    assert [r.tags["order_pipeline/source"] for r in back.run_requests or []] == ["payments"]
    assert checks(back) == [("raw_payments", True)]
    resolved = outbox(warehouse.engine).iloc[-1]
    assert resolved["title"] == "【已恢复】数据源无法连接 payments" and "又能读取了" in resolved["body"]
    assert set(json.loads(back.cursor or "")["asked"]) == {"orders", "payments"}
    quiet = tick(back.cursor, NOW + timedelta(hours=2, minutes=3))
    assert len(outbox(warehouse.engine)) == 3 and not checks(quiet)


def test_a_quiet_source_is_recorded_as_checked_every_few_minutes_not_every_tick(tmp_path, instance):
    path = erp(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO T_SAL_ORDER VALUES ('SO1', '2026-11-25 09:58:00')")
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.create_schema()
    with warehouse.engine.begin() as conn:  # loaded up to its newest row and reconciled just now
        set_state(conn, high_water_mark_key("orders"), "2026-11-25 09:58:00", NOW)
        set_state(conn, reconciled_key("orders"), NOW.isoformat(), NOW)
    sensor = source_change_sensor(orders_source(path))
    res = {
        "sources": SourceDatabases(sources={"orders": SourceConnection(url=f"sqlite:///{path}")}),
        "warehouse": WarehouseResource(url=str(warehouse.engine.url)),
        "alerting": AlertingResource(warehouse=WarehouseResource(url=str(warehouse.engine.url))),
    }
    cursor, observed = None, []
    for seconds in range(0, 11 * 60, 5):  # eleven minutes of ticks
        at = NOW + timedelta(seconds=seconds)
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={**res, "clock": PipelineClock(now_at=at.isoformat())}
        ) as context:
            data = sensor.evaluate_tick(context)
        assert not data.run_requests
        cursor = data.cursor
        observed += [(seconds, e) for e in data.asset_events if isinstance(e, dg.AssetObservation)]
    assert [s for s, _ in observed] == [0, 300, 600]
    first = observed[0][1]
    assert first.asset_key == dg.AssetKey("raw_orders") and first.metadata["checked"].value == "unchanged"
    assert first.metadata["source_timezone"].value == TZ
    assert first.metadata["newest_source_update"].value == "2026-11-25 09:58:00"


class InventoryWatch:
    """The inventory source's sensor and raw asset, on a warehouse of their own, run as the daemon would:
    each tick keeps the cursor the last one returned, each requested run goes to the instance."""

    def __init__(self, folder, instance):
        config, self.engine = sources_company(folder)
        self.sc, self.db, self.instance, self.cursor = (
            config.sources["inventory"],
            folder / "inventory.db",
            instance,
            None,
        )
        self.sensor = source_change_sensor(self.sc)
        self.asset = raw_source_asset(self.sc, config.path)
        self.resources = {
            "sources": SourceDatabases(sources={"inventory": SourceConnection(url=resolved(self.sc.url))}),
            "warehouse": WarehouseResource(url=warehouse_of(config)),
            "clock": PipelineClock(now_at=NOW.isoformat()),
            "alerting": AlertingResource(warehouse=WarehouseResource(url=warehouse_of(config))),
        }

    def stock(self, sku: str, on_hand: float, updated_at: str) -> None:
        with sqlite3.connect(self.db) as conn:
            conn.execute("INSERT OR REPLACE INTO inventory VALUES (?, ?, 0, 5, ?)", (sku, on_hand, updated_at))

    def tick(self):
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor or self.cursor
        return data

    def at(self, now: datetime) -> None:
        self.resources["clock"] = PipelineClock(now_at=now.isoformat())

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [self.asset],
            instance=self.instance,
            resources=self.resources,
            tags=request.tags,
            run_config=request.run_config,
            raise_on_error=False,
        )

    def on_hand(self) -> dict:
        t = RAW_TABLES["inventory"]
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(t.c.sku, t.c.on_hand)).all())


def broken_warehouse(*args, **kwargs):
    raise RuntimeError("the warehouse went away")


def test_a_change_whose_load_failed_is_requested_again(tmp_path, instance, monkeypatch):
    watch = InventoryWatch(tmp_path, instance)
    watch.stock("A", 10, "2026-11-25 10:00:00")
    [first] = watch.tick().run_requests or []
    assert first.run_key == "inventory:2026-11-25 10:00:00"
    assert first.tags["dagster/max_retries"] == str(MAX_RETRIES)
    with monkeypatch.context() as m:
        m.setattr(source_assets, "load_source", broken_warehouse)
        failed = watch.run(first)
    assert not failed.success and watch.on_hand() == {}

    [again] = watch.tick().run_requests or []  # the change is still unloaded
    assert again.run_key == f"inventory:2026-11-25 10:00:00:after:{failed.run_id}"
    assert watch.run(again).success and watch.on_hand() == {"A": 10.0}
    idle = watch.tick()
    assert not idle.run_requests
    assert skip_message(idle) == "inventory: no new rows in inventory since 2026-11-25 10:00:00 (Asia/Shanghai)"


def test_no_second_load_while_one_is_in_flight_or_about_to_be_retried(tmp_path, monkeypatch):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        watch = InventoryWatch(tmp_path, instance)
        watch.stock("A", 10, "2026-11-25 10:00:00")
        [first] = watch.tick().run_requests or []
        assert "waiting for the run of inventory:2026-11-25 10:00:00" in skip_message(watch.tick())
        in_flight = create_run_for_test(
            instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED, tags=first.tags
        )
        assert f"in flight (run {in_flight.run_id})" in skip_message(watch.tick())
        instance.report_run_canceled(in_flight)

        watch.stock("B", 1, "2026-11-25 10:01:00")
        [second] = watch.tick().run_requests or []
        with monkeypatch.context() as m:
            m.setattr(source_assets, "load_source", broken_warehouse)
            failed = watch.run(second)
        run = instance.get_run_by_id(failed.run_id)
        assert run is not None and run.tags["dagster/will_retry"] == "true"
        assert f"Dagster retries run {failed.run_id}" in skip_message(watch.tick())


def test_a_change_that_lands_while_its_run_is_in_flight_is_loaded_by_the_next_run(tmp_path, instance, monkeypatch):
    watch = InventoryWatch(tmp_path, instance)
    watch.stock("A", 10, "2026-11-25 10:00:00")
    [first] = watch.tick().run_requests or []
    real = source_assets.load_source

    def read_then_change(*args, **kwargs):
        result = real(*args, **kwargs)
        watch.stock("B", 1, "2026-11-25 10:00:01")  # commits after the run read the source
        return result

    with monkeypatch.context() as m:
        m.setattr(source_assets, "load_source", read_then_change)
        assert watch.run(first).success
    assert watch.on_hand() == {"A": 10}
    [second] = watch.tick().run_requests or []
    assert second.tags["order_pipeline/watermark"] == "2026-11-25 10:00:01"
    assert watch.run(second).success
    assert watch.on_hand() == {"A": 10, "B": 1}
    assert "no new rows in inventory since 2026-11-25 10:00:01" in skip_message(watch.tick())


def test_a_source_is_reconciled_every_hour_even_when_it_does_not_move(tmp_path, instance):
    watch = InventoryWatch(tmp_path, instance)
    watch.stock("A", 10, "2026-11-25 10:00:00")
    watch.stock("B", 3, "2026-11-25 08:00:00")
    [first] = watch.tick().run_requests or []
    assert watch.run(first).success  # the first, full load: the raw table equals the source
    with sqlite3.connect(watch.db) as conn:  # before the mark: MAX(updated_at) does not move
        conn.execute("UPDATE inventory SET on_hand = 12, updated_at = '2026-11-25 09:00:00' WHERE sku = 'B'")
    watch.at(NOW + 59 * M)
    assert skip_message(watch.tick()) == "inventory: no new rows in inventory since 2026-11-25 10:00:00 (Asia/Shanghai)"

    watch.at(NOW + H)
    [due] = watch.tick().run_requests or []
    assert due.run_key == f"inventory:2026-11-25 10:00:00:reconcile:{NOW.isoformat()}"
    result = watch.run(due)
    assert result.success and watch.on_hand() == {"A": 10.0, "B": 12.0}
    [materialized] = result.asset_materializations_for_node("raw_inventory")
    assert materialized.metadata["reconciled_rows"].value == 1
    assert skip_message(watch.tick()) == "inventory: no new rows in inventory since 2026-11-25 10:00:00 (Asia/Shanghai)"


def test_the_instances_the_project_sets_up_retry_failed_runs(tmp_path, monkeypatch):
    config, _ = sources_company(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with runner.dagster_instance(config) as cli_instance:
        assert cli_instance.run_retries_enabled and cli_instance.run_retries_max_retries == MAX_RETRIES
    shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml").read_text())
    assert shipped["run_retries"] == yaml.safe_load(runner.INSTANCE_YAML)["run_retries"]


# --- the alert sensor across ticks ---------------------------------------------------------------------


class Ticks:
    """Evaluates the alert sensor as the daemon would: the cursor is kept only when a tick succeeds."""

    def __init__(self, sensor, instance, url):
        self.sensor, self.instance, self.url, self.cursor = sensor, instance, url, None

    def __call__(self, now: datetime):
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=resources(self.url, now)
        ) as ctx:  # the alerting resource holds the warehouse's: a nested resource is opened in a context
            data = self.sensor.evaluate_tick(ctx)
        self.cursor = data.cursor
        return data


@pytest.fixture
def ticks(tmp_path, engine, instance):
    config = make_config(tmp_path, str(engine.url), **GROUPS)
    return Ticks(alert_sensor(config), instance, str(engine.url))


def test_nothing_published_yet_is_a_reason_to_skip(ticks):
    assert "nothing published yet" in ticks(NOW).skip_message


def test_alert_sensor_dedups_resends_escalates_and_resolves_across_ticks(ticks, engine):
    publish_rows(engine, [paid_order()])
    first = ticks(NOW)
    assert "paid_not_locked 1" in first.skip_message and not first.run_requests
    assert outbox(engine)["channel"].tolist() == ["wh_box"]
    # The tick launched no run, so it records what it did on order_alerts: the history shows it, the counts plot.
    [observed] = first.asset_events
    assert observed.asset_key == dg.AssetKey("order_alerts")
    counts = {k: v.value for k, v in observed.metadata.items()}
    assert counts["queued_paid_not_locked"] == 1 and counts["delivered_wh_box"] == 1 and counts["delivered"] == 1
    cursor = AlertCursor.parse(ticks.cursor)
    assert cursor.batch is not None and cursor.batch.startswith("1@") and cursor.due_at == NOW + timedelta(minutes=5)

    idle = ticks(NOW + 30 * S)
    assert idle.skip_message.startswith("snapshot unchanged") and not idle.asset_events
    for minutes in (5, 60, 119):  # re-evaluated, but within the cool-down: nothing sent
        ticks(NOW + minutes * M)
    assert len(outbox(engine)) == 1

    ticks(NOW + 2 * H)
    assert len(outbox(engine)) == 2
    ticks(NOW + 4 * H)
    assert outbox(engine)["channel"].tolist()[-1] == "lead_box" and ledger_row(engine)["escalation_level"] == 1

    publish_rows(engine, [order("SO-1", "locked", paid_at=NOW - 3 * H, locked_at=NOW + 4 * H)], batch=2)
    resolved = ticks(NOW + 4 * H + 30 * S)  # a new batch is evaluated at once, whatever was due
    assert "paid_not_locked 0" in resolved.skip_message
    assert ledger_row(engine)["resolved_at"] is not None
    assert outbox(engine)["title"].iloc[-1].startswith("【已恢复】")
    count = len(outbox(engine))
    ticks(NOW + 4 * H + M)
    ticks(NOW + 5 * H)
    assert len(outbox(engine)) == count


def test_two_changes_in_consecutive_runs_and_the_sensor_after_them_send_one_alert(tmp_path, ticks, engine):
    """A change's run sends its alert (order_alerts); the next change's run and the sensor's tick see
    the same open alert in the ledger and send nothing more."""
    config = make_config(tmp_path, str(engine.url), **GROUPS)
    asset = order_alerts_asset(config)
    publish_rows(engine, [paid_order(), order("SO-2", "ordered")])
    assert dg.materialize([asset], resources=resources(str(engine.url), NOW)).success
    assert outbox(engine)["channel"].tolist() == ["wh_box"]
    publish_rows(engine, [paid_order(), order("SO-2", "paid", paid_at=NOW)], batch=2, now=NOW + M)
    assert dg.materialize([asset], resources=resources(str(engine.url), NOW + M)).success
    ticks(NOW + M + 5 * S)
    assert len(outbox(engine)) == 1 and ledger_row(engine)["notified_at"] is not None


def test_a_crash_between_send_and_record_across_ticks(ticks, engine, monkeypatch):
    publish_rows(engine, [paid_order()])

    def killed(*args, **kwargs):
        raise RuntimeError("the code server was killed here")

    with monkeypatch.context() as m:
        m.setattr(alert_queue_ops, "record_outcome", killed)
        with pytest.raises(Exception, match="killed"):
            ticks(NOW)
    assert ticks.cursor is None  # the failed tick kept no cursor
    assert len(outbox(engine)) == 1  # but the message went out

    for later in (30 * S, 5 * M, H, 2 * H - S):  # restarted daemon, ticks go on: nothing is sent twice
        ticks(NOW + later)
    assert len(outbox(engine)) == 1
    ticks(NOW + 2 * H)  # a cool-down after the in-doubt send: sent once more
    assert len(outbox(engine)) == 2
    ticks(NOW + 2 * H + M)
    assert len(outbox(engine)) == 2


def test_an_idle_tick_reads_one_row_and_neither_evaluates_nor_sends(ticks, engine, monkeypatch):
    publish_rows(engine, [paid_order(f"SO-{i}") for i in range(200)])
    ticks(NOW)
    before = ticks.cursor
    calls, statements = [], []
    monkeypatch.setattr(Alerting, "evaluate", lambda self, now: calls.append(("evaluate", now)))
    monkeypatch.setattr(Dispatcher, "drain", lambda self, now: calls.append(("drain", now)))
    sensor_engine = WarehouseResource(url=ticks.url).engine  # the engine the ticks share

    def executed(conn, dbapi_cursor, statement, *args):
        statements.append(statement)

    sa_event.listen(sensor_engine, "before_cursor_execute", executed)
    try:
        for i in range(1, 6):
            statements.clear()
            data = ticks(NOW + i * 10 * S)
            assert skip_message(data).startswith("snapshot unchanged") and not data.run_requests
            assert len(statements) == 1 and "pipeline_state" in statements[0], statements
    finally:
        sa_event.remove(sensor_engine, "before_cursor_execute", executed)
    assert calls == []
    assert ticks.cursor == before


def test_a_channel_that_times_out_gets_one_attempt_per_tick_and_no_sleep(tmp_path, engine, instance):
    publish_rows(engine, [paid_order()])
    url = str(engine.url)
    alerts = {**GROUPS["alerts"], "groups": {**GROUPS["alerts"]["groups"], "warehouse": {"channels": ["wecom_wh"]}}}
    config = make_config(tmp_path, url, channels={**GROUPS["channels"], "wecom_wh": {"type": "outbox"}}, alerts=alerts)
    _, dispatcher = AlertingResource(warehouse=WarehouseResource(url=url)).runtime(config)  # what the ticks use
    slept: list[float] = []
    dispatcher.sleep = slept.append
    down, posts = {"on": True}, []

    def robot(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        if down["on"]:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    dispatcher.channels["wecom_wh"] = WeComRobot(
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", name="wecom_wh", transport=httpx.MockTransport(robot)
    )
    ticks = Ticks(alert_sensor(config), instance, url)

    first = ticks(NOW)
    assert len(posts) == 1 and slept == []
    assert "delivered 0, failed 1" in first.skip_message
    with engine.connect() as conn:
        row = conn.execute(sa.select(alert_queue).where(alert_queue.c.channel == "wecom_wh")).mappings().one()
        tried = conn.execute(sa.select(alert_deliveries.c.ok, alert_deliveries.c.error)).all()
    assert tried == [(False, "no answer within 10 s")]  # the attempt is recorded
    assert row["status"] == "pending" and row["claim_token"] is None  # released, not claimed for a cool-down
    assert AlertCursor.parse(ticks.cursor).due_at == NOW + M  # a tick comes back at the retry time

    ticks(NOW + 30 * S)
    assert len(posts) == 1
    down["on"] = False
    retried = ticks(NOW + M)
    assert len(posts) == 2 and "delivered 1, failed 0" in retried.skip_message
    assert slept == []


def test_a_postgresql_source_url_gets_the_installed_driver():
    sc = SourceConfig(
        "orders",
        Secret(value="postgresql://erp:secret@erp-db:5432/erp"),
        "T_SAL_ORDER",
        None,
        {"order_no": "FBillNo", "updated_at": "FModifyDate"},
        TZ,
    )
    sources = SourceDatabases(sources={"orders": SourceConnection(url=sc.url.resolve() or "")})
    engine = sources.engine("orders")  # connects lazily: nothing reaches erp-db here
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg2")
    assert sources.engine("orders") is engine


# --- run failures -------------------------------------------------------------------------------------


def test_a_failed_run_alerts_the_data_team_and_a_success_resolves_it(tmp_path, engine, instance):
    config = make_config(tmp_path, str(engine.url), **GROUPS)
    healthy = {"ok": False}

    @dg.asset(name="raw_orders")
    def raw_orders():
        if not healthy["ok"]:
            raise RuntimeError("cannot reach the ERP database")

    def status_context(result, event_type):
        run = instance.get_run_by_id(result.run_id)
        event = next(e for e in result.all_events if e.event_type == event_type)
        return dg.build_run_status_sensor_context(
            sensor_name="s",
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=run,
            resources=resources(str(engine.url), NOW),
        )

    failed = dg.materialize([raw_orders], instance=instance, raise_on_error=False)
    with status_context(failed, dg.DagsterEventType.RUN_FAILURE) as context:
        run_failure_sensor(config)(context.for_run_failure())
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["data_box"]
    assert "cannot reach the ERP database" in sent["body"].iloc[0]
    entity = ledger_row(engine, "run_failure", failed.job_def.name)
    assert entity["scope"] == "run" and entity["severity"] == "critical"

    healthy["ok"] = True
    ok = dg.materialize([raw_orders], instance=instance)
    with status_context(ok, dg.DagsterEventType.RUN_SUCCESS) as context:
        run_success_sensor(config)(context)
    assert ledger_row(engine, "run_failure", failed.job_def.name)["resolved_at"] is not None


def test_a_run_failed_outside_its_steps_alerts_with_the_error_its_engine_event_holds(tmp_path, engine, instance):
    """The daemon marks a run whose code could not load failed "from outside the execution context"."""
    from dagster._core.events import EngineEventData
    from dagster._utils.error import serializable_error_info_from_exc_info

    config = make_config(tmp_path, str(engine.url), **GROUPS)

    @dg.asset(name="raw_orders")
    def raw_orders():
        pass

    job = dg.define_asset_job("sources_job", selection=[raw_orders]).resolve(
        asset_graph=dg.Definitions(assets=[raw_orders]).resolve_asset_graph()
    )
    run = instance.create_run_for_job(job_def=job)
    try:
        raise ConfigError("order_pipeline.yaml", "sources.payments.url_env", "FINANCE_URL is not set", "export it")
    except ConfigError:
        error = serializable_error_info_from_exc_info(sys.exc_info())
    instance.report_engine_event("Run failed to start", run, EngineEventData(error=error))
    instance.report_run_failed(run, "This run has been marked as failed from outside the execution context.")
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event is not None
    with dg.build_run_status_sensor_context(
        sensor_name="s",
        dagster_event=failure.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources=resources(str(engine.url), NOW),
    ) as context:
        run_failure_sensor(config)(context.for_run_failure())
    body = outbox(engine)["body"].iloc[0]
    assert "sources.payments.url_env: FINANCE_URL is not set. Fix: export it" in body
    assert "outside the execution context" not in body


# --- the carrier -----------------------------------------------------------------------------------------


def test_a_kuaidi100_push_is_recorded_and_runs_what_follows_it_once_per_queue(engine, instance):
    sensor = carrier_push_sensor()
    res = {"warehouse": WarehouseResource(url=str(engine.url))}
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=res))
    assert "no Kuaidi100 push" in skip_message(first)
    with engine.begin() as conn:
        conn.execute(raw_tracking.insert().values(waybill_no="SF1", is_signed=False, via="push", **{BATCH: 7}))
    pushed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=res))
    [event] = pushed.asset_events
    assert event.asset_key == dg.AssetKey("raw_tracking") and pushed.cursor == "7"
    [request] = pushed.run_requests or []
    assert request.asset_selection == list(DOWNSTREAM) and request.tags[TRIGGER_TAG] == PUSH_TRIGGER
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=pushed.cursor, resources=res))
    assert not again.asset_events and "since batch 7" in skip_message(again)
    # A push run still queued reads every push stored before it starts: no second run is asked for.
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB", run_id="queued-push-run", status=dg.DagsterRunStatus.NOT_STARTED, tags=request.tags
        )
    )
    with engine.begin() as conn:
        conn.execute(raw_tracking.insert().values(waybill_no="SF2", is_signed=False, via="push", **{BATCH: 8}))
    later = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor="7", resources=res))
    assert later.cursor == "8" and len(later.asset_events) == 1 and later.run_requests == []


@pytest.mark.parametrize(
    "every, cron",
    [
        (timedelta(hours=2), "0 */2 * * *"),
        (timedelta(minutes=30), "*/30 * * * *"),
        (timedelta(days=1), "0 0 * * *"),
        (timedelta(hours=5), "0 * * * *"),
    ],
)
def test_poll_cadence(every, cron):
    assert poll_cron(every) == cron
