"""Kuaidi100 real-time queries a day for the demo company, with and without subscription.

    .venv/bin/python benchmarks/bench_carrier_queries.py --orders 5000

Builds the demo company, runs the pipeline once at its pinned time (every waybill is looked up
once, the unsigned ones are subscribed) and hands the stand-in's pushes to the receiver, as
`make demo` does. Then it replays one day of the carrier asset's polling, one pass every
`carrier.poll_interval` (2 h), asking `due_waybills` (the function the asset calls) which
waybills it would query and marking them polled. Subscribed waybills keep getting pushes during
the day (each pass counts those that have pushed as heard), so polling leaves them alone, while
a subscription that never pushed falls back to polling once `push_silence` passes; without subscription
(the same warehouse with its subscriptions removed) every unsigned waybill is due each pass.
New shipments during the day add one first look each either way; the demo's daily count of
them is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from order_pipeline.carrier.receiver import in_process_deliver
from order_pipeline.carrier.sandbox import push_updates
from order_pipeline.carrier.store import TRACKED, due_waybills
from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import RAW_TABLES, carrier_subscriptions, raw_tracking
from order_pipeline.demo.company import DEMO_ENV, build_demo_company
from order_pipeline.domain.times import parse_instant
from order_pipeline.runner import run_pipeline
from order_pipeline.warehouse.engine import Warehouse
from resources.carrier import SANDBOX_SCHEME

NOW = parse_instant("2026-11-25T10:00:00", "Asia/Shanghai")
DAY = timedelta(days=1)


def replay_day(engine: sa.Engine, interval: timedelta, silence: timedelta, subscribed: bool) -> int:
    """Queries one day of polling passes makes, every `interval`, on a copy of the state."""
    t, sub = raw_tracking, carrier_subscriptions
    queries = 0
    with engine.begin() as conn:
        if not subscribed:
            conn.execute(sub.delete())
        at = NOW + interval
        while at <= NOW + DAY:
            # The pushes of the interval: the tracked subscriptions that have pushed keep pushing; one
            # that never pushed (no record yet at the carrier) stays silent and falls back to polling.
            heard = sub.c.state.in_(TRACKED) & sub.c.last_push_at.is_not(None)
            conn.execute(sub.update().where(heard).values(last_push_at=at))
            due = due_waybills(conn, at, interval, cap=10**9, silence=silence)["waybill_no"].tolist()
            queries += len(due)
            for start in range(0, len(due), 500):
                conn.execute(t.update().where(t.c.waybill_no.in_(due[start : start + 500])).values(polled_at=at))
            at += interval
        conn.rollback()
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    args = parser.parse_args()
    os.environ.update(DEMO_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        company = build_demo_company(Path(tmp) / "demo", orders=args.orders, days=30, now=NOW, seed=7)
        config = load_config(company.config_path)
        outcome = run_pipeline(config, dg.DagsterInstance.ephemeral(), now=NOW.isoformat(), full_refresh=True)
        assert outcome.success, outcome.failures
        engine = Warehouse(config.warehouse_url.resolve() or "").engine
        carrier = config.carrier
        deliver = in_process_deliver(engine, carrier.push_salt.resolve() or "", lambda: NOW)
        pushes = push_updates(Path(carrier.endpoint.removeprefix(SANDBOX_SCHEME)), NOW, deliver)
        s, sub = RAW_TABLES["shipments"], carrier_subscriptions
        with engine.connect() as conn:
            waybills = conn.execute(sa.select(sa.func.count()).select_from(s)).scalar_one()
            new_a_day = conn.execute(
                sa.select(sa.func.count()).select_from(s).where(s.c.shipped_at > NOW - DAY)
            ).scalar_one()
            tracked = conn.execute(
                sa.select(sa.func.count()).select_from(sub).where(sub.c.state.in_(TRACKED))
            ).scalar_one()
        interval, silence = carrier.poll_interval, carrier.push_silence
        without = replay_day(engine, interval, silence, subscribed=False)
        with_sub = replay_day(engine, interval, silence, subscribed=True)
        engine.dispose()
    print(f"demo: {args.orders} orders, {waybills} waybills, {new_a_day} shipped in the last day")
    print(f"after the first run: {tracked} subscriptions tracked, {len(pushes)} pushes stored")
    print(f"one day of polling every {interval}, push silence {silence}:")
    print(f"  without subscription: {without:>7} queries (+ {new_a_day} first looks of new waybills)")
    print(f"  with subscription:    {with_sub:>7} queries (+ {new_a_day} first looks of new waybills)")
    if with_sub:
        print(f"  ratio: {without / with_sub:.1f}x fewer")


if __name__ == "__main__":
    main()
