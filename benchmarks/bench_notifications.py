"""Customer-message benchmark: one round of order_created messages over WeChat and Aliyun SMS stand-ins.

    .venv/bin/python benchmarks/bench_notifications.py --orders 10000 --targets sqlite,postgres

A fresh warehouse per target (a SQLite file, or the PostgreSQL database op_bench_notify, created
and dropped here) holds `--orders` new orders, each with its own mainland mobile number (the
daily cap of 3 per number holds none) and ordered in the hour before the pinned 10:00 Shanghai
time (no quiet hours). Half of them carry an openid that follows the WeChat stand-in, the other
half none, so they fall back to SMS. The stand-ins (`notify.sandbox.wechat`, `notify.sandbox.aliyun`,
which recompute every signature and check its time against the real clock) are served by uvicorn
threads on loopback ports, and the notifier is built from a config the way the asset builds it
(`notify.runtime.build_notifier`), channels `wechat` and `sms`, `send: [wechat, sms]`.

`Notifier.run` is timed once, split into its plan, sweep and send phases; then run again, which
must send nothing. The figures that the README quotes are checked, and the script exits non-zero
when one is wrong: one ledger row per order and event, every order sent once, and each stand-in's
accepted messages equal to the ledger's sent rows of its channel (WeChat counted by distinct
touser + client_msg_id, SMS by distinct OutId). Inside the send phase, the time spent in the
channels' `send` (the HTTP round trip, signing included) and the stand-ins' own handling are
shown too: the stand-ins share this process's interpreter, so their time is part of the wall time.
`--profile` prints the notifier thread's cProfile (the first run on each target).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
import uvicorn

from order_pipeline.contract.config import CarrierConfig, Config, Secret
from order_pipeline.contract.customer_schema import customer_notifications
from order_pipeline.contract.schema import BATCH, RAW_TABLES, order_tracking_snapshot
from order_pipeline.domain.stages import NEXT_OWNER, STAGE_LABELS
from order_pipeline.domain.times import parse_instant
from order_pipeline.notify import ledger
from order_pipeline.notify.runtime import build_notifier
from order_pipeline.notify.sandbox import wechat as wechat_sandbox
from order_pipeline.notify.sandbox.aliyun import aliyun_app
from order_pipeline.notify.sender import Notifier, RoundResult
from order_pipeline.warehouse.engine import Warehouse
from order_pipeline.warehouse.frames import insert_frame
from order_pipeline.warehouse.state import PUBLISHED_BATCH, set_state

NOW = parse_instant("2026-11-25T10:00:00", "Asia/Shanghai")  # 02:00 UTC, a weekday morning
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "op_bench_notify"
PORTS = range(18800, 18900)  # the loopback ports this benchmark may serve its stand-ins on
APP_ID, APP_SECRET = "wx00000000000bench", "bench-wechat-app-secret-0123456789"
KEY_ID, KEY_SECRET = "LTAI5tBenchKeyId", "bench-aliyun-access-key-secret-0123"
WECHAT_TEMPLATE, SMS_TEMPLATE = "TPL-bench-created", "SMS_900000001"
ENV = {
    "BENCH_NOTIFY_LINK_SECRET": "bench-notify-link-secret-0123456789",
    "BENCH_WECHAT_SECRET": APP_SECRET,
    "BENCH_ALIYUN_ID": KEY_ID,
    "BENCH_ALIYUN_SECRET": KEY_SECRET,
}


# --- the stand-ins on loopback --------------------------------------------------------------------


def _free_socket() -> socket.socket:
    """A listening socket on the first free port of PORTS."""
    for port in PORTS:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(128)
        return sock
    raise SystemExit(f"no free loopback port in {PORTS.start}-{PORTS.stop - 1}")


@contextmanager
def serve(app) -> Iterator[int]:
    """`app` served by uvicorn in a thread on a loopback port; yields the port. As tests/helpers.py's
    serve_app: the socket listens before the server starts, so connections wait in its backlog."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class Stopwatch:
    """Seconds and calls spent in the functions it wraps, by name (thread-safe enough: each name is
    called from one thread)."""

    def __init__(self):
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed


# --- the warehouse ----------------------------------------------------------------------------------


def warehouse_url(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'warehouse.db'}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{PG_DATABASE}"')
    admin.dispose()
    return sa.engine.make_url(PG_ADMIN).set(database=PG_DATABASE).render_as_string(False)


def drop_database(kind: str) -> None:
    if kind != "postgres":
        return
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    admin.dispose()


def openid(i: int) -> str | None:
    """Even orders follow the Official Account; odd ones have no openid and go by SMS."""
    return f"oBench{i:010d}" if i % 2 == 0 else None


def publish_orders(engine: sa.Engine, count: int) -> None:
    """`count` new orders in raw_orders (with the openids) and published in the snapshot."""
    nos = [f"SO{i:08d}" for i in range(count)]
    phones = [f"139{i:08d}" for i in range(count)]  # distinct mainland mobiles
    ordered = [NOW - timedelta(seconds=60 + (i * 3_499) % 3_480) for i in range(count)]  # within the hour
    raw = pd.DataFrame(
        {
            "order_no": nos,
            "customer_name": "张三",
            "customer_phone": phones,
            "customer_openid": [openid(i) for i in range(count)],
            "ship_address": "上海市浦东新区",
            "amount": 100.0,
            "ordered_at": ordered,
            "status": "open",
            "updated_at": ordered,
            BATCH: 1,
        }
    )
    snapshot = pd.DataFrame(
        {
            "order_no": nos,
            "stage": "ordered",
            "stage_label": STAGE_LABELS["ordered"],
            "status": "open",
            "customer_name": "张三",
            "customer_phone": phones,
            "phone_tail": [p[-4:] for p in phones],
            "amount": 100.0,
            "paid_amount": 0.0,
            "parcel_count": 0,
            "parcels_signed": 0,
            "out_for_delivery": False,
            "line_count": 1,
            "total_qty": 1.0,
            "ordered_at": ordered,
            "waiting_since": ordered,
            "responsible_role": NEXT_OWNER.get("ordered"),
            "published_at": NOW,
        },
        columns=[c.name for c in order_tracking_snapshot.c],
    )
    with engine.begin() as conn:
        insert_frame(conn, RAW_TABLES["orders"], raw)
        insert_frame(conn, order_tracking_snapshot, snapshot)
        set_state(conn, PUBLISHED_BATCH, "1", NOW)


def config_for(folder: Path, url: str, wechat_port: int, sms_port: int) -> Config:
    notifications = {
        "channels": {
            "wechat": {
                "type": "wechat",
                "app_id": APP_ID,
                "app_secret_env": "BENCH_WECHAT_SECRET",
                "api": f"http://127.0.0.1:{wechat_port}",
            },
            "sms": {
                "type": "aliyun_sms",
                "access_key_id_env": "BENCH_ALIYUN_ID",
                "access_key_secret_env": "BENCH_ALIYUN_SECRET",
                "sign_name": "示例商城",
                "endpoint": f"http://127.0.0.1:{sms_port}",
            },
        },
        "send": ["wechat", "sms"],
        "events": {
            "order_created": {
                "templates": {
                    "wechat": {
                        "id": WECHAT_TEMPLATE,
                        "params": {"character_string1": "{order_no}", "thing2": "{event}"},
                    },
                    "sms": {"id": SMS_TEMPLATE, "params": {"order": "{order_no}", "code": "{link_code}"}},
                }
            }
        },
    }
    web = {"base_url": "https://track.example.com", "link_secret_env": "BENCH_NOTIFY_LINK_SECRET"}
    return Config(
        path=folder / "order_pipeline.yaml",
        timezone="Asia/Shanghai",
        data_dir=folder,
        warehouse_url=Secret(value=url),
        sources={},
        carrier=CarrierConfig(),
        sections={"web": web, "notifications": notifications},
    )


# --- the round, by phase ----------------------------------------------------------------------------


class PhasedNotifier(Notifier):
    """The notifier with its plan and send phases timed; what run() adds between them is the sweep."""

    def __init__(self, built: Notifier, watch: Stopwatch):
        super().__init__(built.engine, built.settings, built.channels, built.links, built.key)
        self.watch = watch

    def plan(self, now: datetime, result: RoundResult) -> None:
        self.watch.wrap("plan", super().plan)(now, result)

    def send_ready(self, now: datetime, result: RoundResult) -> None:
        self.watch.wrap("send", super().send_ready)(now, result)


def timed_run(notifier: Notifier, profile: bool) -> tuple[RoundResult, float, str]:
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = notifier.run(NOW)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    text = ""
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats("order_pipeline", 40)  # the project's own functions
        stats.strip_dirs().sort_stats("tottime").print_stats(20)
        text = out.getvalue()
    return result, seconds, text


def ledger_figures(engine: sa.Engine) -> dict:
    n = customer_notifications
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(n)).scalar_one()
        keys = sa.select(n.c.order_no, n.c.event_key).group_by(n.c.order_no, n.c.event_key)
        doubled = conn.execute(
            sa.select(sa.func.count()).select_from(keys.having(sa.func.count() > 1).subquery())
        ).scalar_one()
        by_channel = sa.select(n.c.channel, sa.func.count()).where(n.c.status == ledger.SENT).group_by(n.c.channel)
        sent = {channel: count for channel, count in conn.execute(by_channel)}
        by_status = sa.select(n.c.status, sa.func.count()).group_by(n.c.status)
        statuses = {status: count for status, count in conn.execute(by_status)}
    return {"rows": rows, "doubled keys": doubled, "sent": sent, "statuses": statuses}


def bench(kind: str, orders: int, folder: Path, profile: bool) -> tuple[list[str], list[str]]:
    """The printed lines for one target, and what is wrong (empty when every check holds)."""
    url = warehouse_url(kind, folder)
    try:
        return _bench(kind, url, orders, folder, profile)
    finally:
        drop_database(kind)


def _bench(kind: str, url: str, orders: int, folder: Path, profile: bool) -> tuple[list[str], list[str]]:
    wh = Warehouse(url)
    wh.create_schema()
    publish_orders(wh.engine, orders)
    followers = [o for o in (openid(i) for i in range(orders)) if o]
    wechat = wechat_sandbox.WeChatSandbox(APP_ID, APP_SECRET, followers=followers, templates=[WECHAT_TEMPLATE])
    sms_app, sms = aliyun_app(KEY_ID, KEY_SECRET, daily_cap=orders + 1)
    watch = Stopwatch()
    # The stand-ins' own handling, in their server thread; the web apps look these up on each request.
    wechat.template_send = watch.wrap("wechat stand-in", wechat.template_send)
    sms.answer = watch.wrap("sms stand-in", sms.answer)
    with serve(wechat_sandbox.app(wechat)) as wechat_port, serve(sms_app) as sms_port:
        built = build_notifier(config_for(folder, url, wechat_port, sms_port), wh.engine)
        assert built is not None
        notifier = PhasedNotifier(built, watch)
        for name, channel in notifier.channels.items():
            channel.send = watch.wrap(f"{name} send", channel.send)  # type: ignore[method-assign]
        try:
            first, seconds, profiled = timed_run(notifier, profile)
            spent = defaultdict(float, watch.seconds)  # the first run's, before the second adds to them
            calls = Counter(watch.calls)
            second, again_seconds, _ = timed_run(notifier, False)
        finally:
            notifier.close()
        figures = ledger_figures(wh.engine)
        accepted = {"wechat": len(wechat.accepted), "sms": len(sms.accepted)}
        distinct = {
            "wechat": len({(a.touser, a.client_msg_id) for a in wechat.accepted}),
            "sms": len({m.get("OutId") for m in sms.accepted}),
        }
    wh.engine.dispose()

    per_channel = Counter()
    others = Counter()
    for (_, channel, status), count in first.outcomes.items():
        if status == ledger.SENT:
            per_channel[channel] += count
        else:
            others[f"{channel} {status}"] += count
    sent_total = first.count(ledger.SENT)
    plan_s, send_s = spent["plan"], spent["send"]
    sweep_s = seconds - plan_s - send_s
    http_s = spent["wechat send"] + spent["sms send"]
    stand_in_s = spent["wechat stand-in"] + spent["sms stand-in"]
    expected = {"wechat": len(followers), "sms": orders - len(followers)}

    lines = [
        f"target={kind} orders={orders:,}",
        f"  first run: {seconds:.2f} s, {sent_total / seconds:.0f} messages/s"
        f" (recorded {first.recorded:,}, too old {first.too_old}, in doubt {first.in_doubt})",
        f"  phases: plan {plan_s:.2f} s ({plan_s / seconds:.1%}), sweep {sweep_s:.2f} s,"
        f" send {send_s:.2f} s ({send_s / seconds:.1%})",
        f"  in the send phase: channel send calls {http_s:.2f} s"
        f" (wechat {spent['wechat send']:.2f} s / {calls['wechat send']:,} calls,"
        f" sms {spent['sms send']:.2f} s / {calls['sms send']:,} calls),"
        f" of which the stand-ins' own handling {stand_in_s:.2f} s"
        f" (wechat {spent['wechat stand-in']:.2f}, sms {spent['sms stand-in']:.2f});"
        f" the rest of the phase {send_s - http_s:.2f} s",
        f"  sent: wechat={per_channel['wechat']:,} sms={per_channel['sms']:,} other outcomes: {dict(others) or 'none'}",
        f"  ledger: rows={figures['rows']:,} statuses={figures['statuses']}"
        f" duplicate (order_no, event_key)={figures['doubled keys']}",
        f"  wechat: ledger sent={figures['sent'].get('wechat', 0):,} stand-in accepted={accepted['wechat']:,}"
        f" distinct (touser, client_msg_id)={distinct['wechat']:,}",
        f"  sms: ledger sent={figures['sent'].get('sms', 0):,} stand-in accepted={accepted['sms']:,}"
        f" distinct OutId={distinct['sms']:,}",
        f"  second run: sent={second.count(ledger.SENT)} recorded={second.recorded} in {again_seconds:.2f} s",
    ]
    wrong = []
    if figures["rows"] != orders:
        wrong.append(f"{kind}: {figures['rows']} ledger rows for {orders} orders")
    if figures["doubled keys"]:
        wrong.append(f"{kind}: {figures['doubled keys']} (order_no, event_key) recorded more than once")
    for channel in ("wechat", "sms"):
        counts = {
            "round's outcomes": per_channel[channel],
            "ledger sent": figures["sent"].get(channel, 0),
            "stand-in accepted": accepted[channel],
            "distinct at the stand-in": distinct[channel],
            "expected": expected[channel],
        }
        if len(set(counts.values())) != 1:
            wrong.append(f"{kind} {channel}: counts differ {counts}")
    if others:
        wrong.append(f"{kind}: messages not sent {dict(others)}")
    if second.count(ledger.SENT) or second.recorded:
        wrong.append(f"{kind}: the second run sent {second.count(ledger.SENT)}, recorded {second.recorded}")
    if profiled:
        lines.append(profiled)
    return lines, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--targets", default="sqlite,postgres")
    parser.add_argument("--profile", action="store_true", help="print the notifier thread's cProfile")
    args = parser.parse_args()
    os.environ.update(ENV)
    problems: list[str] = []
    for kind in args.targets.split(","):
        if kind not in ("sqlite", "postgres"):
            parser.error(f"unknown target {kind!r}: use sqlite, postgres")
        with tempfile.TemporaryDirectory() as tmp:
            lines, wrong = bench(kind, args.orders, Path(tmp), args.profile)
        print("\n".join(lines), flush=True)
        problems += wrong
    if problems:
        print("WRONG:\n  " + "\n  ".join(problems), flush=True)
        sys.exit(1)
    print("correctness: every check holds", flush=True)


if __name__ == "__main__":
    main()
