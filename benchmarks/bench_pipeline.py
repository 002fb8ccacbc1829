"""Pipeline benchmark: full rebuild, I/O floor and a 1 % incremental run, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_pipeline.py --sizes 10000,100000,1000000 --targets sqlite,postgres

For each size a demo company is generated once (cached under benchmarks/out/) and its carrier
events are landed in the warehouse as the carrier feed would have over time. Then, each in its
own process so that peak RSS (that process's and its workers', summed) is that step's alone:

- full rebuild: every source extracted, `unified_orders` derived, the tracking tables published;
- I/O floor: the same source rows only read, and the same number of snapshot rows only written;
- required writes: what the design writes besides, each bare (raw rows and derived rows through
  the driver into unindexed copies, the timeline copied inside the warehouse), added to the floor:
  no implementation that lands `raw_*` and publishes the timeline through these drivers does less;
- incremental: 1 % of the orders changed in the ERP, then the same steps as an incremental run;
  three rounds, each on a different 1 %, reported as the first (straight after the rebuild) and
  the median.

The steps are the functions the Dagster assets call, without Dagster's per-run overhead
(process start, code load, run storage: a few seconds, the same at every size). The sources are
landed two at a time, as Dagster's default multiprocess executor runs the source assets on this
2-core machine; the floor reads them two at a time too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import sqlalchemy as sa
import yaml

if TYPE_CHECKING:
    from order_pipeline.contract.config import Secret

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
INCREMENTAL_ROUNDS = 3
# Largest first, so that two workers finish together.
SOURCE_ORDER = ("reservations", "orders", "order_lines", "payments", "shipments", "deliveries", "inventory")
# Sources landed at once: Dagster's default multiprocess executor runs as many steps as there are cores.
EXTRACT_WORKERS = 2
CONFIG_PATH = ""  # the child's config, for its pool workers


def _url(secret: Secret) -> str:
    """A database URL from the config; one that resolves to nothing is a config the benchmark cannot run."""
    url = secret.resolve()
    if url is None:
        raise SystemExit(f"no database URL: {secret.env or 'the config'} does not give one")
    return url


# -- steps, each run in a child process -------------------------------------------------------


def _extract(name: str, now: datetime, full: bool) -> tuple[str, float]:
    """One source landed, in a pool worker: (source, seconds)."""
    from order_pipeline.contract.config import load_config
    from order_pipeline.pipeline.loading import load_source
    from order_pipeline.warehouse.engine import Warehouse

    config = load_config(CONFIG_PATH)
    sc = config.sources[name]
    engine = Warehouse(_url(config.warehouse_url)).engine
    source = sa.create_engine(_url(sc.url))
    started = time.perf_counter()
    load_source(engine, source, sc, now, full=full)
    seconds = time.perf_counter() - started
    engine.dispose()
    source.dispose()
    return name, seconds


def _extract_all(config, now, full) -> dict[str, float]:
    """Every source landed, EXTRACT_WORKERS at a time, order lines once the orders are in.

    This is how the job runs under Dagster's default multiprocess executor: the source
    assets are independent but for `raw_order_lines`, which depends on `raw_orders`.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = [n for n in SOURCE_ORDER if n in config.sources]
    times, running = {}, {}
    with ProcessPoolExecutor(EXTRACT_WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
        while pending or running:
            for name in list(pending):
                ready = name != "order_lines" or "orders" not in config.sources or "extract orders" in times
                if ready and len(running) < EXTRACT_WORKERS:
                    pending.remove(name)
                    running[pool.submit(_extract, name, now, full)] = name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                del running[future]
                name, seconds = future.result()
                times[f"extract {name}"] = seconds
    return times


def _load_all(config, engine, now, full) -> dict[str, float]:
    from order_pipeline.pipeline.publish import publish
    from order_pipeline.pipeline.unify import unify

    started = time.perf_counter()
    phase("extract")
    times = _extract_all(config, now, full)
    times["extract (wall)"] = time.perf_counter() - started
    started = time.perf_counter()
    phase("unified_orders")
    result = unify(engine, now, config.carrier.transit_days, full=full)
    times["unified_orders"] = time.perf_counter() - started
    started = time.perf_counter()
    phase("publish")
    published = publish(engine, now, full=full)
    times["publish"] = time.perf_counter() - started
    times["orders recomputed"] = result.touched
    times["events written"] = published.events_written
    return times


def step_full(config, engine) -> dict:
    return _load_all(config, engine, NOW, full=True)


def step_incremental(config, engine) -> dict:
    return _load_all(config, engine, LATER, full=False)


def _read_one(name: str) -> int:
    from order_pipeline.contract.config import load_config
    from order_pipeline.pipeline.loading import read_source

    sc = load_config(CONFIG_PATH).sources[name]
    return len(read_source(sa.create_engine(_url(sc.url)), sc))


def step_floor(config, engine) -> dict:
    """Read every source row (as many at once as the extract does), write as many snapshot rows:
    what no implementation can skip."""
    from concurrent.futures import ProcessPoolExecutor

    from order_pipeline.contract.schema import order_tracking_snapshot, unified_orders
    from order_pipeline.warehouse.frames import insert_frame, read_frame

    started = time.perf_counter()
    with ProcessPoolExecutor(EXTRACT_WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
        read = sum(pool.map(_read_one, [n for n in SOURCE_ORDER if n in config.sources]))
    read_seconds = time.perf_counter() - started

    with engine.connect() as conn:  # untimed: the rows to write, as the rebuild produced them
        rows = read_frame(conn, sa.select(*(c for c in unified_orders.c if c.name != "_batch")))
    rows["published_at"] = pd.Timestamp(NOW)
    # Same columns, no secondary indexes: the bare write.
    floor = sa.Table(
        "bench_floor_snapshot",
        sa.MetaData(),
        *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in order_tracking_snapshot.c),
    )
    floor.drop(engine, checkfirst=True)
    floor.create(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        insert_frame(conn, floor, rows)
    write_seconds = time.perf_counter() - started
    floor.drop(engine)
    return {"read sources": read_seconds, "write snapshot": write_seconds, "rows read": read}


def step_required(config, engine) -> dict:
    """The writes the design adds to the floor, each bare (an unindexed copy, nothing else):
    every raw row landed through the driver, as `raw_*` must be; the derived rows through the driver,
    as `unified_orders`; the timeline copied inside the warehouse, the cheapest way to write it.

    Read from what the rebuild just wrote (untimed), one table at a time.
    """
    from order_pipeline.contract.schema import RAW_TABLES, order_tracking_events, unified_orders
    from order_pipeline.warehouse.frames import insert_frame, read_frame

    def bare(table: sa.Table) -> sa.Table:
        copy = sa.Table("bench_bare_" + table.name, sa.MetaData(), *(sa.Column(c.name, c.type) for c in table.columns))
        copy.drop(engine, checkfirst=True)
        copy.create(engine)
        return copy

    times = {"write raw rows": 0.0, "write unified rows": 0.0}
    for table in (*RAW_TABLES.values(), unified_orders):
        with engine.connect() as conn:
            rows = read_frame(
                conn, sa.select(table), [c.name for c in table.columns if isinstance(c.type, (sa.DateTime, sa.Date))]
            )
        copy = bare(table)
        started = time.perf_counter()
        with engine.begin() as conn:
            insert_frame(conn, copy, rows)
        seconds = time.perf_counter() - started
        times["write unified rows" if table is unified_orders else "write raw rows"] += seconds
        copy.drop(engine)
        del rows
    copy = bare(order_tracking_events)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(copy).from_select([c.name for c in order_tracking_events.c], sa.select(order_tracking_events))
        )
    times["copy timeline"] = time.perf_counter() - started
    copy.drop(engine)
    return times


STEPS = {"full": step_full, "incremental": step_incremental, "floor": step_floor, "required": step_required}


def child(step: str, config_path: str) -> None:
    from order_pipeline.contract.config import load_config
    from order_pipeline.warehouse.engine import Warehouse

    global CONFIG_PATH
    CONFIG_PATH = config_path
    config = load_config(config_path)
    wh = Warehouse(_url(config.warehouse_url))
    wh.create_schema()
    wh.engine.dispose()  # no pooled connection may cross into the forked workers
    global MEMORY
    MEMORY = MemorySampler()
    started = time.perf_counter()
    times = STEPS[step](config, wh.engine)
    times["total"] = time.perf_counter() - started
    times["peak_rss_mb"] = MEMORY.stop()
    times.update({f"peak_rss_mb {name}": peak for name, peak in MEMORY.peaks.items()})
    print(json.dumps(times))


class MemorySampler(threading.Thread):
    """Peak resident memory of this process and every process it started (the extract and
    derive workers), summed, sampled every 100 ms, overall and per phase. Not getrusage's
    ru_maxrss: that is one process's peak, and Linux carries it over from the parent across
    fork and exec."""

    def __init__(self):
        super().__init__(daemon=True)
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.1):
            rss = sum(_rss_mb(pid) for pid in _process_tree(os.getpid()))
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max([*self.peaks.values(), _rss_mb(os.getpid())])


MEMORY: MemorySampler | None = None  # the child's sampler; its steps name their phases


def phase(name: str) -> None:
    if MEMORY is not None:
        MEMORY.phase = name


def _process_tree(root: int) -> list[int]:
    tree, frontier = [root], [root]
    while frontier:
        children = []
        for pid in frontier:  # each thread lists the children it started
            for listing in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):  # the process ended meanwhile
                    children += [int(child) for child in listing.read_text().split()]
        tree += children
        frontier = children
    return tree


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0) / 1024


def run_child(step: str, config_path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, str(config_path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- setup ------------------------------------------------------------------------------------


def company(orders: int) -> Path:
    from order_pipeline.demo.company import build_demo_company

    target = OUT / f"company-{orders}"
    marker = target / ".complete"
    if not marker.exists():
        print(f"  generating the demo company with {orders:,} orders …", flush=True)
        started = time.perf_counter()
        build_demo_company(target, orders=orders, days=30, now=NOW, seed=7, bad_rows=False)
        marker.write_text(f"{time.perf_counter() - started:.1f}")
    return target


def warehouse_config(target: Path, kind: str, orders: int) -> Path:
    """The demo config pointed at a fresh warehouse of the given kind."""
    doc = yaml.safe_load((target / "order_pipeline.yaml").read_text(encoding="utf-8"))
    if kind == "sqlite":
        db = target / "bench_warehouse.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        doc["warehouse"] = {"url": f"sqlite:///{db}"}
    else:
        name = f"order_pipeline_bench_{orders}"
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        doc["warehouse"] = {"url": sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(False)}
    path = target / f"bench-{kind}.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def land_carrier_feed(config_path: Path, carrier_db: Path) -> float:
    """Put the carrier's answers into the warehouse, as polls and pushes would have over the month."""

    from order_pipeline.contract.config import load_config
    from order_pipeline.contract.schema import raw_tracking, raw_tracking_events
    from order_pipeline.domain.validation import parse_timestamps
    from order_pipeline.warehouse.engine import Warehouse
    from order_pipeline.warehouse.frames import insert_frame
    from order_pipeline.warehouse.rebuild import rebuilding

    started = time.perf_counter()
    config = load_config(config_path)
    wh = Warehouse(_url(config.warehouse_url))
    wh.create_schema()
    with sqlite3.connect(carrier_db) as src:
        events = pd.read_sql("SELECT waybill_no, time, context, area_name AS area, status FROM carrier_events", src)
        waybills = pd.read_sql("SELECT waybill_no, com AS carrier_code, state, ischeck FROM carrier_waybills", src)
    events["event_at"] = parse_timestamps(events.pop("time"), "Asia/Shanghai")
    events = events.drop_duplicates(["waybill_no", "event_at", "context"]).sort_values(["waybill_no", "event_at"])
    first = events.groupby("waybill_no", sort=False).head(1).set_index("waybill_no")
    last = events.groupby("waybill_no", sort=False).tail(1).set_index("waybill_no")
    w = waybills.set_index("waybill_no")
    tracking = pd.DataFrame(
        {
            "waybill_no": w.index,
            "carrier_code": w["carrier_code"].to_numpy(),
            "state": w["state"].to_numpy(),
            "is_signed": (w["ischeck"] == 1).to_numpy(),
            "first_event_at": first["event_at"].reindex(w.index).to_numpy(),
            "last_event_at": last["event_at"].reindex(w.index).to_numpy(),
            "last_context": last["context"].reindex(w.index).to_numpy(),
            "last_area": last["area"].reindex(w.index).to_numpy(),
            "polled_at": pd.Timestamp(NOW),
            "via": "push",
            "_batch": 1,
        }
    )
    with wh.engine.begin() as conn, rebuilding(conn, raw_tracking, raw_tracking_events):
        insert_frame(conn, raw_tracking, tracking)
        insert_frame(conn, raw_tracking_events, events)
    return time.perf_counter() - started


def change_one_percent(target: Path, part: int) -> int:
    """Touch one order in a hundred in the ERP (`part` picks which), as a day of edits would:
    each stamped after anything already there, spread over the next hour, a few to a second."""
    with sqlite3.connect(target / "erp.db") as erp:
        newest = erp.execute("SELECT max(FModifyDate) FROM T_SAL_ORDER").fetchone()[0]
        return erp.execute(
            "UPDATE T_SAL_ORDER SET FAmount = FAmount + 1, "
            "FModifyDate = datetime(?, '+' || (60 + (rowid / 100) % 3600) || ' seconds') "
            "WHERE rowid % 100 = ?",
            (newest, part),
        ).rowcount


def undo_change(target: Path, part: int) -> None:
    with sqlite3.connect(target / "erp.db") as erp:
        erp.execute("UPDATE T_SAL_ORDER SET FAmount = FAmount - 1 WHERE rowid % 100 = ?", (part,))


def incremental_rounds(target: Path, config_path: Path) -> list[dict]:
    """INCREMENTAL_ROUNDS incremental runs, each after a different 1 % of the orders changed.

    The first follows the rebuild; a different 1 % each time keeps later rounds from finding
    the pages they need still cached by the round before, as a pipeline running all day would not.
    """
    runs, parts = [], []
    try:
        for part in range(INCREMENTAL_ROUNDS):
            parts.append(part)
            changed = change_one_percent(target, part)
            runs.append({"changed": changed, **run_child("incremental", config_path)})
    finally:
        # After the last round: undone earlier, a round's orders would change again under the next.
        for part in parts:
            undo_change(target, part)
    return runs


# -- report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--targets", default="sqlite,postgres")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    OUT.mkdir(exist_ok=True)
    rows = []
    for orders in (int(s) for s in args.sizes.split(",")):
        target = company(orders)
        for kind in args.targets.split(","):
            print(f"\n== {orders:,} orders → {kind} ==", flush=True)
            config_path = warehouse_config(target, kind, orders)
            feed = land_carrier_feed(config_path, target / "carrier.db")
            print(f"  carrier feed landed in {feed:.1f} s (setup, not timed below)")
            full = run_child("full", config_path)
            for name, value in full.items():
                print(
                    f"  full  {name:<22}{value:>10.1f}"
                    if isinstance(value, float)
                    else f"  full  {name:<22}{value:>10,}",
                    flush=True,
                )
            floor = run_child("floor", config_path)
            floor_total = floor["read sources"] + floor["write snapshot"]
            print(
                f"  floor read {floor['read sources']:.1f} s ({floor['rows read']:,} rows) + "
                f"write {floor['write snapshot']:.1f} s = {floor_total:.1f} s",
                flush=True,
            )
            runs = incremental_rounds(target, config_path)
            for i, inc in enumerate(runs, 1):
                print(
                    f"  incremental {i}: {inc['changed']:,} orders changed, {inc['orders recomputed']:,} recomputed "
                    f"in {inc['total']:.2f} s, peak RSS {inc['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            # After the incremental rounds: its bulk writes would leave them a colder cache than a rebuild does.
            required = run_child("required", config_path)
            required_total = floor_total + sum(v for k, v in required.items() if k.startswith(("write", "copy")))
            print(
                "  required writes, bare: "
                + ", ".join(
                    f"{k} {required[k]:.1f} s" for k in ("write raw rows", "write unified rows", "copy timeline")
                )
                + f"; with the floor {required_total:.1f} s = {required_total / floor_total:.2f}× the floor",
                flush=True,
            )
            seconds = [inc["total"] for inc in runs]
            rows.append(
                (
                    orders,
                    kind,
                    full["total"],
                    full["peak_rss_mb"],
                    floor_total,
                    full["total"] / floor_total,
                    required_total,
                    runs[0]["changed"],
                    seconds[0],
                    statistics.median(seconds),
                    max(inc["peak_rss_mb"] for inc in runs),
                )
            )
    print(
        "\n| orders | warehouse | full rebuild s | peak RSS MB | I/O floor s | rebuild / floor |"
        " floor + required writes s | rebuild / that |"
        f" changed orders | incremental s, first | median of {INCREMENTAL_ROUNDS} | incr. peak RSS MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r[0]:,} | {r[1]} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.1f} | {r[5]:.2f}× | {r[6]:.1f} |"
            f" {r[2] / r[6]:.2f}× |"
            f" {r[7]:,} | {r[8]:.2f} | {r[9]:.2f} | {r[10]:.0f} |"
        )


if __name__ == "__main__":
    main()
