"""Carrier benchmark: one polling run against a Kuaidi100 that is down, circuit breaker off and on.

    .venv/bin/python benchmarks/bench_carrier.py --waybills 1000 --sample 10

A loopback HTTP server on an ephemeral port plays the dead carrier, two ways: it takes each
request and never answers ("no answer": the client's timeout runs out), or it answers HTTP 503
at once. The client is the real one, with real timeouts and real backoff sleeps: timeout 0.2 s,
3 retries, backoff 0.5 s doubled. The warehouse is a fresh SQLite file with `--waybills` due
parcels, polled by the function the `raw_tracking` asset calls (`carrier.polling.poll_due`).

With the breaker off (`max_consecutive_failures: 0`, what a run did before the breaker) every
waybill costs the same, so `--sample` of them are polled and the time for all of them is
projected from those; `--full` polls them all instead (over an hour for 1,000).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from order_pipeline.carrier.polling import poll_due
from order_pipeline.carrier.store import due_waybills
from order_pipeline.contract.schema import BATCH, RAW_TABLES
from order_pipeline.warehouse.engine import Warehouse
from order_pipeline.warehouse.frames import insert_frame
from resources.carrier import Kuaidi100Client

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
TIMEOUT, RETRIES, BACKOFF = 0.2, 3, 0.5
BREAKER = 5  # the default of carrier.max_consecutive_failures
MODES = ("no answer", "HTTP 503")


@contextmanager
def dead_carrier(mode: str) -> Iterator[str]:
    """The query URL of a loopback server that never answers, or answers 503."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if mode == "no answer":
                release.wait()  # holds the connection until the benchmark ends
                return
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/poll/query.do"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def warehouse_with_due(folder: Path, count: int) -> sa.Engine:
    """A fresh SQLite warehouse with `count` live orders and a never-polled parcel each."""
    path = folder / f"warehouse-{time.monotonic_ns()}.db"
    wh = Warehouse(f"sqlite:///{path}")
    wh.create_schema()
    at = NOW - timedelta(hours=5)
    orders = pd.DataFrame(
        {
            "order_no": [f"SO{i:06d}" for i in range(count)],
            "customer_name": "张三",
            "customer_phone": "13800000000",
            "ship_address": "上海",
            "amount": 10.0,
            "ordered_at": NOW - timedelta(days=1),
            "status": "open",
            "updated_at": at,
            BATCH: 1,
        }
    )
    shipments = pd.DataFrame(
        {
            "order_no": orders["order_no"],
            "waybill_no": [f"YT{i:010d}" for i in range(count)],
            "carrier_code": "yuantong",
            "shipped_at": at,
            "updated_at": at,
            BATCH: 1,
        }
    )
    with wh.engine.begin() as conn:
        insert_frame(conn, RAW_TABLES["orders"], orders)
        insert_frame(conn, RAW_TABLES["shipments"], shipments)
    return wh.engine


def run_once(folder: Path, url: str, waybills: int, polled: int, breaker: int) -> tuple[float, int]:
    """Seconds for one polling run over `polled` of `waybills` due parcels, and how many were asked."""
    engine = warehouse_with_due(folder, waybills)
    with engine.connect() as conn:
        due = due_waybills(conn, NOW, timedelta(hours=2), waybills)
    client = Kuaidi100Client(
        endpoint=url, customer="bench", key="bench", timeout_seconds=TIMEOUT, retries=RETRIES, backoff_seconds=BACKOFF
    )
    try:
        start = time.perf_counter()
        result = poll_due(engine, due.head(polled), client.query, NOW, breaker)
        return time.perf_counter() - start, result.asked
    finally:
        client.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waybills", type=int, default=1000, help="due waybills (default 1000)")
    parser.add_argument("--sample", type=int, default=10, help="waybills polled with the breaker off (default 10)")
    parser.add_argument("--full", action="store_true", help="poll every waybill with the breaker off too")
    args = parser.parse_args()
    n = args.waybills
    sample = n if args.full else min(args.sample, n)
    print(
        f"{n} due waybills; client timeout {TIMEOUT:g} s, {RETRIES} retries, backoff {BACKOFF:g} s doubled; "
        f"breaker on = {BREAKER} failures in a row"
    )
    print(f"{'carrier':<10} {'breaker':<8} {'asked':>6} {'measured':>10} {'run of all due':>15} {'off / on':>9}")
    with tempfile.TemporaryDirectory(prefix="bench-carrier-") as tmp:
        for mode in MODES:
            with dead_carrier(mode) as url:
                off, off_asked = run_once(Path(tmp), url, n, sample, breaker=0)
                on, on_asked = run_once(Path(tmp), url, n, n, breaker=BREAKER)
            projected = off / off_asked * n
            kind = "measured" if off_asked == n else f"projected from {off_asked}"
            print(f"{mode:<10} {'off':<8} {off_asked:>6} {off:>9.1f}s {projected:>14.0f}s  ({kind})")
            print(f"{mode:<10} {'on':<8} {on_asked:>6} {on:>9.1f}s {on:>14.1f}s {projected / on:>8.0f}x")


if __name__ == "__main__":
    main()
