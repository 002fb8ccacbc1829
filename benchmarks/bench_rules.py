"""Benchmark: the SLA rules over a 1,000,000-order snapshot on SQLite and PostgreSQL, and an idle alert-sensor tick.

    .venv/bin/python benchmarks/bench_rules.py                       # 1M orders, SQLite and PostgreSQL
    .venv/bin/python benchmarks/bench_rules.py --orders 200000 --only sqlite
    ORDER_PIPELINE_TEST_PG=postgresql+psycopg2://postgres@127.0.0.1:5432/postgres  (the server to use)

The snapshot is synthetic (numpy, written with warehouse.frames.insert_frame): an open window of a month
in which most orders are delivered and a few percent sit in each earlier stage, with about one
percent breaking each rule. Order lines (1.5 per order), stock per SKU and stock locks are
written too, since the SKU rule reads them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.alerts.rules.parser import default_rules
from order_pipeline.alerts.rules.sql import evaluate
from order_pipeline.contract.config import CarrierConfig, Config, Secret
from order_pipeline.contract.schema import RAW_TABLES, order_tracking_snapshot
from order_pipeline.domain.stages import NEXT_OWNER, STAGE_LABELS
from order_pipeline.warehouse.engine import Warehouse
from order_pipeline.warehouse.frames import insert_frame
from order_pipeline.warehouse.state import PUBLISHED_BATCH, set_state

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
TZ = "Asia/Shanghai"
PG_ADMIN = os.environ.get("ORDER_PIPELINE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
STAGES = np.array(["ordered", "paid", "locked", "shipped", "in_transit", "delivered", "exception", "cancelled"])
SHARES = np.array([0.03, 0.01, 0.02, 0.03, 0.12, 0.745, 0.01, 0.035])
CHUNK = 100_000
HOUR = np.timedelta64(3600, "s")
T = TypeVar("T")


def synthetic(n: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(snapshot, order lines, inventory, reservations) for n orders."""
    rng = np.random.default_rng(seed)
    stage = STAGES[rng.choice(len(STAGES), n, p=SHARES / SHARES.sum())]
    times = timeline(rng, stage)
    order_no = np.strings.add("SO", (10_000_000 + np.arange(n)).astype(str))
    snapshot = snapshot_frame(rng, order_no, stage, times)
    return (snapshot, *stock(rng, order_no, stage))


def timeline(rng: np.random.Generator, stage: np.ndarray) -> dict[str, np.ndarray]:
    """When each order reached each stage, as naive UTC datetime64 (NaT: not reached)."""
    n = len(stage)
    now = np.datetime64(NOW.replace(tzinfo=None), "s")
    rank = pd.Series(stage).map({s: i for i, s in enumerate(STAGES)}).to_numpy()
    hours = lambda lo, hi: (rng.uniform(lo, hi, n) * 3600).astype("timedelta64[s]")  # noqa: E731
    # Each stage's orders are as old as orders in that stage usually are.
    age = np.select(
        [stage == "ordered", stage == "paid", stage == "locked", stage == "shipped"],
        [hours(0, 3), hours(0.5, 4), hours(1, 24), hours(2, 30)],
        hours(24, 30 * 24),
    )
    ordered_at = now - age
    paid_at = np.where(rank >= 1, ordered_at + hours(0.02, 1.5), np.datetime64("NaT"))
    paid_at = np.where(stage == "paid", now - hours(0, 2.5), paid_at)  # a fifth waits longer than 2 h
    paid_at = np.where(stage == "cancelled", np.datetime64("NaT"), paid_at)
    locked_at = np.where(
        (rank >= 2) & (stage != "cancelled"), np.minimum(paid_at + hours(0.05, 1), now), np.datetime64("NaT")
    )
    shipped = (rank >= 3) & (stage != "cancelled")
    shipped_at = np.where(shipped, np.minimum(locked_at + hours(1, 20), now), np.datetime64("NaT"))
    moving = np.isin(stage, ["in_transit", "delivered", "exception"])
    latest = np.where(moving, np.minimum(shipped_at + hours(1, 40), now), np.datetime64("NaT"))
    on_the_way = np.isin(stage, ["in_transit", "exception"])
    latest = np.where(on_the_way, now - hours(0, 40), latest)  # carriers report every few hours
    stuck = on_the_way & (rng.random(n) < 0.06)
    latest = np.where(stuck, now - hours(49, 120), latest)
    delivered_at = np.where(stage == "delivered", latest, np.datetime64("NaT"))
    promised = (ordered_at + rng.integers(1, 4, n).astype("timedelta64[D]")).astype("datetime64[D]")
    promised = np.where(rng.random(n) < 0.3, promised, np.datetime64("NaT"))
    waiting = np.select(
        [stage == "paid", stage == "locked", stage == "shipped", moving],
        [paid_at, locked_at, shipped_at, latest],
        ordered_at,
    )
    return {
        "ordered_at": ordered_at,
        "paid_at": paid_at,
        "locked_at": locked_at,
        "shipped_at": shipped_at,
        "delivered_at": delivered_at,
        "latest_event_at": latest,
        "promised_date": promised,
        "waiting_since": waiting,
        "shipped": shipped,
    }


def snapshot_frame(
    rng: np.random.Generator, order_no: np.ndarray, stage: np.ndarray, times: dict[str, np.ndarray]
) -> pd.DataFrame:
    n, shipped = len(stage), times["shipped"]
    utc = lambda a: pd.to_datetime(a).tz_localize("UTC")  # noqa: E731
    return pd.DataFrame(
        {
            "order_no": order_no,
            "stage": stage,
            "stage_label": pd.Series(stage).map(STAGE_LABELS).to_numpy(),
            "status": np.where(stage == "cancelled", "cancelled", "open"),
            "customer_name": "张三",
            "customer_phone": "13812345678",
            "phone_tail": "5678",
            "amount": rng.uniform(20, 2000, n).round(2),
            "ordered_at": utc(times["ordered_at"]),
            "paid_at": utc(times["paid_at"]),
            "locked_at": utc(times["locked_at"]),
            "shipped_at": utc(times["shipped_at"]),
            "delivered_at": utc(times["delivered_at"]),
            "latest_event_at": utc(times["latest_event_at"]),
            "promised_date": pd.to_datetime(times["promised_date"]),
            "parcel_count": shipped.astype(np.int64),
            "parcels_signed": (stage == "delivered").astype(np.int64),
            "out_for_delivery": False,
            # A 0-d object array, as np.where makes of a bare None.
            "waybill_nos": np.where(shipped, np.strings.add("YT", order_no), np.array(None, dtype=object)),
            "responsible_role": pd.Series(stage).map(NEXT_OWNER).to_numpy(),
            "waiting_since": utc(times["waiting_since"]),
            "published_at": pd.Timestamp(NOW),
        }
    )


def stock(
    rng: np.random.Generator, order_no: np.ndarray, stage: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(order lines, inventory, reservations): 1.5 lines an order over 5,000 SKUs, the locked ones reserved."""
    n, n_skus = len(stage), 5000
    per_order = rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1])
    line_order = np.repeat(np.arange(n), per_order)
    line_no = np.arange(len(line_order)) - np.repeat(np.cumsum(per_order) - per_order, per_order)
    sku = (rng.integers(0, n_skus, n)[line_order] + line_no * 7) % n_skus
    sku_code = np.strings.add("M", (100_000 + np.arange(n_skus)).astype(str))
    lines = pd.DataFrame(
        {
            "order_no": order_no[line_order],
            "sku": sku_code[sku],
            "qty": rng.integers(1, 4, len(line_order)).astype(float),
            "_batch": 1,
        }
    )
    on_hand = rng.integers(0, 1200, n_skus).astype(float)
    reserved = np.minimum(on_hand, rng.integers(0, 60, n_skus)).astype(float)
    safety = rng.integers(5, 80, n_skus).astype(float)
    inventory = pd.DataFrame(
        {
            "sku": sku_code,
            "on_hand": on_hand,
            "reserved": reserved,
            "safety_stock": safety,
            "updated_at": pd.Timestamp(NOW),
            "_batch": 1,
        }
    )
    locked_lines = stage[line_order] == "locked"
    reservations = pd.DataFrame(
        {
            "reservation_id": np.strings.add("LK", np.arange(int(locked_lines.sum())).astype(str)),
            "order_no": order_no[line_order][locked_lines],
            "sku": sku_code[sku][locked_lines],
            "qty": lines["qty"].to_numpy()[locked_lines],
            "status": "locked",
            "locked_at": pd.Timestamp(NOW),
            "updated_at": pd.Timestamp(NOW),
            "_batch": 1,
        }
    )
    return lines, inventory, reservations


def load(engine: sa.Engine, n: int) -> float:
    started = time.perf_counter()
    snapshot, lines, inventory, reservations = synthetic(n)
    with engine.begin() as conn:
        for table, frame in (
            (order_tracking_snapshot, snapshot),
            (RAW_TABLES["order_lines"], lines),
            (RAW_TABLES["inventory"], inventory),
            (RAW_TABLES["reservations"], reservations),
        ):
            for i in range(0, len(frame), CHUNK):
                insert_frame(conn, table, frame.iloc[i : i + CHUNK])
        set_state(conn, PUBLISHED_BATCH, "1", NOW)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def best_of(fn: Callable[[], T], repeat: int = 3) -> tuple[float, T]:
    started = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - started]
    for _ in range(repeat - 1):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def bench(name: str, url: str, n: int) -> None:
    wh = Warehouse(url)
    wh.create_schema()
    engine = wh.engine
    print(f"\n== {name}: {n:,} orders in the snapshot ({url.split('@')[-1]})")
    print(f"  load synthetic data                 {load(engine, n):8.1f} s")
    rules = default_rules()
    for rule in rules:
        with engine.connect() as conn:
            t, found = best_of(partial(evaluate, conn, [rule], NOW, TZ))
        print(f"  rule {rule.id:<30} {t:8.3f} s   {found[rule.id].count:>7,} offending")
    with engine.connect() as conn:
        t, found = best_of(partial(evaluate, conn, rules, NOW, TZ))
    print(f"  ALL FOUR RULES                      {t:8.3f} s   {sum(b.count for b in found.values()):>7,} offending")

    tmp = Path(tempfile.mkdtemp())
    config = Config(tmp / "order_pipeline.yaml", TZ, tmp, Secret(value=url), {}, CarrierConfig(), sections={})
    alerting = Alerting(config, engine)
    started = time.perf_counter()
    ev = alerting.evaluate(NOW)
    first = time.perf_counter() - started
    print(f"  evaluate + ledger, first time       {first:8.3f} s   {ev.queued:>7,} messages queued")
    from order_pipeline.alerts.dispatch import Dispatcher, build_channels

    dispatcher = Dispatcher(engine, build_channels(alerting.settings, engine))
    started = time.perf_counter()
    drained = dispatcher.drain(NOW)
    print(
        f"  first drain (outbox, digests)       {time.perf_counter() - started:8.3f} s   "
        f"{len(drained.sent):>7,} messages for {drained.delivered:,} alerts"
    )
    started = time.perf_counter()
    alerting.evaluate(NOW + timedelta(minutes=1))
    print(f"  evaluate + ledger, steady state     {time.perf_counter() - started:8.3f} s")
    idle_tick(alerting, config, url)
    engine.dispose()


def idle_tick(alerting: Alerting, config: Config, url: str) -> None:
    """An alert-sensor tick with nothing to do: the snapshot did not change and nothing is due."""
    import dagster as dg

    from resources.alerting import AlertingResource
    from resources.warehouse import PipelineClock, WarehouseResource
    from sensors.alerts import AlertCursor, alert_sensor

    sensor = alert_sensor(config)
    cursor = AlertCursor(alerting.published_batch(), NOW, NOW + timedelta(minutes=5)).dump()
    times = []
    with dg.instance_for_test() as instance:
        for i in range(12):
            now = NOW + timedelta(seconds=10 + i)
            ctx = dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={
                    "clock": PipelineClock(now_at=now.isoformat()),
                    "alerting": AlertingResource(warehouse=WarehouseResource(url=url)),
                },
            )
            started = time.perf_counter()
            data = sensor.evaluate_tick(ctx)
            times.append(time.perf_counter() - started)
            assert (data.skip_message or "").startswith("snapshot unchanged"), data.skip_message
    print(
        f"  idle alert-sensor tick              {statistics.median(times[2:]) * 1000:8.1f} ms (median; "
        f"first {times[0] * 1000:.0f} ms builds the runtime)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    if args.only != "postgres":
        folder = Path(tempfile.mkdtemp(prefix="bench-rules-"))
        try:
            bench("SQLite", f"sqlite:///{folder / 'warehouse.db'}", args.orders)
        finally:
            from resources.alerting import AlertingResource
            from resources.warehouse import WarehouseResource

            AlertingResource.forget()
            WarehouseResource.dispose_all()
            shutil.rmtree(folder, ignore_errors=True)
    if args.only != "sqlite":
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"order_pipeline_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            bench(
                "PostgreSQL",
                sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False),
                args.orders,
            )
        finally:
            from resources.alerting import AlertingResource
            from resources.warehouse import WarehouseResource

            AlertingResource.forget()
            WarehouseResource.dispose_all()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


if __name__ == "__main__":
    main()
