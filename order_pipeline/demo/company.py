"""A deterministic demo company: four source systems under their own names, and the config that maps them.

`build_demo_company` writes what a growing online shop's systems hold after `days` days of
trading, each in its own SQLite file and its own naming:

- `erp.db`, a Kingdee-style ERP: `T_SAL_ORDER`, `T_SAL_ORDERENTRY`, status codes A/C;
- `finance.db`: table `收款单` with Chinese column names and statuses;
- `wms.db`: stock, stock locks, outbound parcels and proofs of delivery;
- `carrier.db`: the tables `carrier_sandbox` answers Kuaidi100 queries from;

plus `order_pipeline.yaml`, which maps every source onto the contract in `canonical.py`.

Most orders follow the happy path as far as their age allows. A share of them is made to show
one of the cases in `Case`, each at least `QUOTAS[case][1]` times, so that every stage, every
alert rule and every carrier state appears at any size. The same arguments give the same rows:
all randomness comes from one seeded generator and `now` is an argument, never the clock.

Times are whole seconds of Shanghai wall-clock time (the sources store naive local times).
The bulk is built as numpy arrays, one element per order, line, payment, parcel or carrier
event, and written with one executemany per table: a million orders take under a minute.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from importlib import resources
from itertools import chain
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.demo.cases import (
    AT_DEST_HUB,
    AT_ORIGIN_HUB,
    DISPATCH,
    EVENT_COLUMNS,
    EVENTS_TO_STATE,
    LEFT_ORIGIN_HUB,
    MIN_DAYS,
    PICKUP,
    SIGNED,
)
from order_pipeline.demo.plan import Plan, draw_plan
from order_pipeline.demo.random_data import (
    concat_strings,
    ranks_in_groups,
    timestamp_text,
)
from order_pipeline.demo.reference_data import (
    CARRIER_CODE,
    CARRIERS,
    CITIES,
    SIGNERS,
    SURNAMES,
    WAREHOUSES,
)
from order_pipeline.demo.sources import SOURCE_TABLES, connect_for_filling, contract_breaking_rows, write_source

TIMEZONE = "Asia/Shanghai"
CONFIG_NAME = "order_pipeline.yaml"
CONFIG_TEMPLATE_FILE = "config_template.yaml"  # package data beside this module
# The sandbox accepts whatever account the client is configured with; the demo uses this one.
DEMO_CUSTOMER = "DEMO"
DEMO_KEY = "demo-key"
DEMO_KEY_ENV = "ORDER_PIPELINE_DEMO_KUAIDI100_KEY"

LINK_SECRET_FILE = "secrets/link.key"
DEMO_STAFF = ("ops", "demo-ops")  # the demo's ops board login
MIN_ORDERS = 100  # fewer cannot give every case its minimum count

EVENT_CHUNK = 200_000  # parcels per batch of rendered carrier events: bounds memory at a million orders


@dataclass(frozen=True)
class DemoCompany:
    """What `build_demo_company` wrote."""

    erp_db: Path
    finance_db: Path
    wms_db: Path
    carrier_db: Path
    config_path: Path
    counts: dict[str, int]  # rows written per source table


# Lookups by index, for rendering whole arrays at once.
CITY = np.array([c[1] for c in CITIES])
AREA = np.array([c[1] if c[0] == c[1] else f"{c[0]},{c[1]}" for c in CITIES])  # Kuaidi100 areaName
HUB = np.array([c[1].removesuffix("市") + "转运中心" for c in CITIES])
DISTRICT = np.array([c[2] for c in CITIES])
WAREHOUSE_CITY = np.array([w[0] for w in WAREHOUSES])
WAREHOUSE_DISTRICT = np.array([w[1] for w in WAREHOUSES])
CARRIER_NAME = np.array([c[1] for c in CARRIERS])


def build_demo_company(
    target: Path,
    orders: int = 5000,
    days: int = 30,
    *,
    now: datetime,
    seed: int = 7,
    bad_rows: bool = True,
    progress: Callable[[str], None] | None = None,
) -> DemoCompany:
    """Write the demo sources and their config into `target`, replacing an earlier demo there.

    `orders` are placed over the `days` days before `now`; `seed` picks the company; `bad_rows`
    adds a handful of rows that break the source contract; `progress` hears about each step.
    The pipeline's own `warehouse.db` in `target` is removed too: it would hold the rows and
    high-water marks of the sources being replaced.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    if orders < MIN_ORDERS:
        raise ValueError(f"orders must be at least {MIN_ORDERS} for every case to appear")
    if days < MIN_DAYS:
        raise ValueError(f"days must be at least {MIN_DAYS}: stuck parcels and old orders need that much history")
    say = progress or (lambda _msg: None)
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    for name in (*SOURCE_TABLES, "carrier.db", "warehouse.db"):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (target / f"{name}{suffix}").unlink(missing_ok=True)

    plan = draw_plan(np.random.Generator(np.random.PCG64(seed)), orders, days, _local_seconds(now))
    say(
        f"planned {len(plan.orders):,} orders, {len(plan.lines['order']):,} lines, "
        f"{len(plan.payments):,} payments, {len(plan.parcels):,} parcels"
    )
    bad = contract_breaking_rows(plan) if bad_rows else {}
    carrier_db = target / "carrier.db"
    jobs = {db: partial(write_source, target / db, tables, plan, bad) for db, tables in SOURCE_TABLES.items()}
    jobs[carrier_db.name] = partial(_write_carrier, carrier_db, plan)
    counts: dict[str, int] = {}
    for db, write in jobs.items():
        written = write()
        counts |= written
        say(f"{db}: " + ", ".join(f"{count:,} rows in {table}" for table, count in written.items()))

    config_path = target / CONFIG_NAME
    _write_link_secret(target)
    config_path.write_text(_config_text(carrier_db, max_polls=len(plan.parcels)), encoding="utf-8")
    say(f"wrote {config_path}")
    return DemoCompany(target / "erp.db", target / "finance.db", target / "wms.db", carrier_db, config_path, counts)


# --- the plan: numbers only, one row per order, line, payment, lock and parcel ---------------------------


# --- rendering: the plan in each system's own names and formats ----------------------------------------


# --- the carrier sandbox --------------------------------------------------------------------------------


def _write_carrier(path: Path, plan: Plan) -> dict[str, int]:
    """Waybills the carrier knows (at least one event) and their events; the rest answer 'no record'."""
    tracked = plan.parcels[plan.parcels["n_events"] > 0].reset_index(drop=True)
    order = tracked["order"].to_numpy()
    customers = plan.customers
    with closing(connect_for_filling(path)) as conn:
        carrier_sandbox.create_schema(conn)
        # Filling is faster without the index; create_schema puts it back afterwards.
        conn.execute("DROP INDEX carrier_events_waybill")
        with conn:
            waybills = conn.executemany(
                "INSERT INTO carrier_waybills (waybill_no, com, phone_tail, state, ischeck) VALUES (?, ?, ?, ?, ?)",
                zip(
                    tracked["waybill"].tolist(),
                    CARRIER_CODE[tracked["carrier"].to_numpy()].tolist(),
                    np.strings.slice(customers["phone"][order], -4, None).tolist(),
                    tracked["state"].tolist(),
                    (tracked["state"] == 3).astype(int).tolist(),
                ),
            ).rowcount
        batches = (
            _event_rows(
                tracked.iloc[i : i + EVENT_CHUNK],
                customers["city"][order[i : i + EVENT_CHUNK]],
                customers["district"][order[i : i + EVENT_CHUNK]],
            )
            for i in range(0, len(tracked), EVENT_CHUNK)
        )
        with conn:
            events = conn.executemany(
                "INSERT INTO carrier_events (waybill_no, time, context, area_name, status) VALUES (?, ?, ?, ?, ?)",
                chain.from_iterable(batches),
            ).rowcount
        carrier_sandbox.create_schema(conn)
    return {"carrier_waybills": waybills, "carrier_events": events}


def _event_rows(p: pd.DataFrame, dest: np.ndarray, district: np.ndarray) -> Iterable[tuple]:
    """The events of a batch of parcels, oldest first: (waybill, time, context, area, status)."""
    n = p["n_events"].to_numpy()
    i = np.repeat(np.arange(len(p)), n)
    k = ranks_in_groups(n) + 1
    time = p["shipped"].to_numpy()[i] + p[EVENT_COLUMNS].to_numpy()[i, k - 1]
    trouble = p["exception_state"].to_numpy()[i]
    kind = np.where((k == n[i]) & (trouble > 0), -trouble, k)  # carrier trouble takes the last event's place
    where = {
        "warehouse": p["warehouse"].to_numpy()[i],
        "carrier": p["carrier"].to_numpy()[i],
        "dest": dest[i],
        "district": district[i],
        "courier": p["courier"].to_numpy()[i],
        "phone": p["courier_phone"].to_numpy()[i],
        "signer": p["signer"].to_numpy()[i],
    }
    context, area, status = (np.empty(len(i), dtype=object) for _ in range(3))
    for kd in np.unique(kind):
        m = kind == kd
        context[m], area[m] = _event_text(int(kd), {name: v[m] for name, v in where.items()})
        status[m] = kuaidi100.STATE_LABEL[int(-kd if kd < 0 else EVENTS_TO_STATE[kd])]
    return zip(
        p["waybill"].to_numpy()[i].tolist(),
        timestamp_text(time).tolist(),
        context.tolist(),
        area.tolist(),
        status.tolist(),
    )


def _event_text(kind: int, q: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Context and areaName of one kind of event, worded as Chinese carriers do; some carry the courier's mobile.

    `kind` is the event's place on the way (PICKUP ... SIGNED), or minus the Kuaidi100 state of carrier trouble.
    """
    origin, dest = WAREHOUSE_CITY[q["warehouse"]], q["dest"]
    at_origin, at_dest = concat_strings("【", CITY[origin], "】"), concat_strings("【", CITY[dest], "】")

    def courier() -> np.ndarray:
        return concat_strings("快递员", np.array(SURNAMES)[q["courier"]], "师傅")

    if kind == PICKUP:
        site = WAREHOUSE_DISTRICT[q["warehouse"]]
        return concat_strings(at_origin, CARRIER_NAME[q["carrier"]], " ", site, "营业部 已揽收"), AREA[origin]
    if kind == AT_ORIGIN_HUB:
        return concat_strings(at_origin, "快件已到达 ", HUB[origin]), AREA[origin]
    if kind == LEFT_ORIGIN_HUB:
        return concat_strings(at_origin, "快件已从 ", HUB[origin], " 发出，下一站 ", HUB[dest]), AREA[origin]
    if kind == AT_DEST_HUB:
        return concat_strings(at_dest, "快件已到达 ", HUB[dest]), AREA[dest]
    if kind == DISPATCH:
        site = DISTRICT[dest, q["district"]]
        return concat_strings(at_dest, site, "营业部 ", courier(), "正在派件，电话：", q["phone"]), AREA[dest]
    if kind == SIGNED:
        signer = np.array(SIGNERS)[q["signer"]]
        return concat_strings(
            at_dest, "快件已签收，签收人：", signer, "。如有疑问请联系", courier(), "，电话：", q["phone"]
        ), AREA[dest]
    if kind == -2:
        site = DISTRICT[dest, q["district"]]
        return concat_strings(at_dest, "收件人电话无人接听，快件暂存", site, "营业部，待联系后再派送"), AREA[dest]
    if kind == -4:
        return concat_strings(at_origin, "退回件已由寄件人签收，原因：收件人拒收"), AREA[origin]
    if kind == -6:
        return concat_strings(at_dest, "收件地址不详，快件正在退回寄件人"), AREA[dest]
    return concat_strings(at_dest, "收件人拒收，原因：不想要了。", courier(), "电话：", q["phone"]), AREA[dest]  # -14


# --- the config -----------------------------------------------------------------------------------------


def _config_text(carrier_db: Path, max_polls: int) -> str:
    from order_pipeline.domain.passwords import hash_password

    # The sandbox path is written absolute: the config resolves relative paths in database URLs only.
    return _config_template().format(
        endpoint=json.dumps(f"sandbox://{carrier_db}"),
        max_polls=max_polls,
        customer=DEMO_CUSTOMER,
        key_env=DEMO_KEY_ENV,
        key=DEMO_KEY,
        link_secret=LINK_SECRET_FILE,
        staff_user=DEMO_STAFF[0],
        staff_password=DEMO_STAFF[1],
        staff_hash=hash_password(DEMO_STAFF[1]),
    )


def _config_template() -> str:
    """The commented config, with str.format placeholders for what each demo differs in."""
    return resources.files("order_pipeline.demo").joinpath(CONFIG_TEMPLATE_FILE).read_text(encoding="utf-8")


def _write_link_secret(target: Path) -> None:
    """A fresh random secret for signing the demo's tracking links, readable by its owner only."""
    path = target / LINK_SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32), encoding="utf-8")
    path.chmod(0o600)


# --- small utilities --------------------------------------------------------------------------------------


def _local_seconds(now: datetime) -> int:
    local = now.astimezone(ZoneInfo(TIMEZONE)).replace(tzinfo=None)
    return (local - datetime(1970, 1, 1)) // timedelta(seconds=1)
