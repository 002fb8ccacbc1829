"""Reconciliation benchmark: what comparing a whole source with its raw table costs, step by step.

    .venv/bin/python benchmarks/bench_reconcile.py --rows 100000,1000000 --targets sqlite,postgres

A synthetic ERP orders table (SQLite, the canonical columns, every order distinct) is fully
loaded into a fresh warehouse; then 10 rows are changed with an `updated_at` older than the
high-water mark, which no incremental load sees. Reported: `reconcile_source` end to end (it must
find the 10), and its parts measured one by one: reading the source, validating it, reading the
raw table, fingerprinting and comparing both, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
CHANGED = 10


def build_source(folder: Path, rows: int) -> Path:
    from order_pipeline.contract.canonical import ORDERS

    rng = np.random.default_rng(7)
    db = folder / "orders.db"
    nos = [f"SO{i:09d}" for i in range(rows)]
    minutes = rng.integers(0, 30 * 24 * 60, rows)
    ordered = (np.datetime64("2026-10-26T00:00") + minutes.astype("timedelta64[m]")).astype(str)
    updated = (np.datetime64("2026-10-26T00:00") + (minutes + 30).astype("timedelta64[m]")).astype(str)
    amounts = np.round(rng.uniform(10, 5000, rows), 2)
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE orders ({', '.join(ORDERS.column_names)})")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, NULL, ?, ?, 'CNY', ?, NULL, ?, ?)",
            (
                (
                    no,
                    f"客户{i % 5000}",
                    f"138{i:08d}",
                    f"上海市{i % 300}号",
                    float(a),
                    o.replace("T", " "),
                    "cancelled" if i % 17 == 0 else "open",
                    u.replace("T", " "),
                )
                for i, (no, a, o, u) in enumerate(zip(nos, amounts, ordered, updated, strict=True))
            ),
        )
        conn.execute("CREATE INDEX ix_orders_updated ON orders (updated_at)")
    return db


def warehouse_url(folder: Path, kind: str, rows: int) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'warehouse.db'}"
    name = f"order_pipeline_bench_reconcile_{rows}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(False)


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def bench(rows: int, kind: str, folder: Path) -> dict:
    from order_pipeline.contract.canonical import ORDERS
    from order_pipeline.contract.config import Secret, SourceConfig
    from order_pipeline.contract.schema import RAW_TABLES
    from order_pipeline.domain.fingerprints import differences
    from order_pipeline.domain.validation import validate
    from order_pipeline.pipeline.loading import load_source, read_source
    from order_pipeline.pipeline.reconcile import reconcile_source
    from order_pipeline.warehouse.engine import Warehouse
    from order_pipeline.warehouse.frames import read_frame

    db = build_source(folder, rows)
    url = warehouse_url(folder, kind, rows)
    columns = {c: c for c in ORDERS.column_names}
    sc = SourceConfig("orders", Secret(value=f"sqlite:///{db}"), "orders", None, columns, "Asia/Shanghai")
    wh = Warehouse(url)
    wh.create_schema()
    src = sa.create_engine(f"sqlite:///{db}")
    _, load_s = timed(load_source, wh.engine, src, sc, NOW, True)
    with sqlite3.connect(db) as conn:  # older than the mark: invisible to an incremental read
        conn.execute(
            f"UPDATE orders SET amount = amount + 1, updated_at = '2026-10-26 00:00:00' "
            f"WHERE rowid IN (SELECT rowid FROM orders ORDER BY random() LIMIT {CHANGED})"
        )

    frame, read_s = timed(read_source, src, sc)
    (good, _), validate_s = timed(validate, ORDERS, frame, sc.timezone, sc.columns)
    t = RAW_TABLES["orders"]
    with wh.engine.connect() as conn:
        stored, stored_s = timed(
            read_frame,
            conn,
            sa.select(*(t.c[c] for c in ORDERS.column_names)),
            ["ordered_at", "promised_date", "updated_at"],
        )
    found, compare_s = timed(differences, ORDERS, good, stored)
    assert len(found.changed) == CHANGED, len(found.changed)
    result, total_s = timed(reconcile_source, wh.engine, src, sc, NOW)
    assert result.reloaded == CHANGED, result
    wh.engine.dispose()
    return {
        "rows": rows,
        "warehouse": kind,
        "full load": load_s,
        "reconcile": total_s,
        "read source": read_s,
        "validate": validate_s,
        "read raw table": stored_s,
        "fingerprint + compare": compare_s,
        "buckets differing": result.buckets,
        "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000")
    parser.add_argument("--targets", default="sqlite")
    args = parser.parse_args()
    for rows in (int(r) for r in args.rows.split(",")):
        for kind in args.targets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                out = bench(rows, kind, Path(tmp))
            print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
