"""A deterministic demo company: four source systems under their own names, and the config that maps them.

`build_demo_company` writes what a growing online shop's systems hold after `days` days of
trading, each in its own SQLite file and its own naming:

- `erp.db`, a Kingdee-style ERP: `T_SAL_ORDER`, `T_SAL_ORDERENTRY`, status codes A/C;
- `finance.db`: table `收款单` with Chinese column names and statuses;
- `wms.db`: stock, stock locks, outbound parcels and proofs of delivery;
- `carrier.db`: the tables `carrier_sandbox` answers Kuaidi100 queries from;

plus `order_pipeline.yaml`, which maps every source onto the contract in `canonical.py`.

Most orders follow the happy path as far as their age allows. A share of them is made to show
one of the cases in `cases.Case`, each at least `cases.QUOTAS[case][1]` times, so that every
stage, every alert rule and every carrier state appears at any size. The same arguments give the
same rows: all randomness comes from one seeded generator and `now` is an argument, never the clock.

Times are whole seconds of Shanghai wall-clock time (the sources store naive local times).
The bulk is built as numpy arrays, one element per order, line, payment, parcel or carrier
event, and written with one executemany per table: a million orders take under a minute.

`plan.draw_plan` draws every number up front (with `cases` and `customers`); `sources` renders
and writes the ERP, finance and WMS tables from the plan, `carrier_events` the carrier's.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from order_pipeline.demo.carrier_events import write_carrier
from order_pipeline.demo.cases import MIN_DAYS
from order_pipeline.demo.plan import draw_plan
from order_pipeline.demo.sources import SOURCE_TABLES, contract_breaking_rows, write_source
from order_pipeline.domain.passwords import hash_password

TIMEZONE = "Asia/Shanghai"
CONFIG_NAME = "order_pipeline.yaml"
CONFIG_TEMPLATE_FILE = "config_template.yaml"  # package data beside this module
# The sandbox accepts whatever account the client is configured with; the demo uses this one.
DEMO_CUSTOMER = "DEMO"
DEMO_KEY = "demo-key"
DEMO_KEY_ENV = "ORDER_PIPELINE_DEMO_KUAIDI100_KEY"
DEMO_SALT = "demo-salt"
DEMO_SALT_ENV = "ORDER_PIPELINE_DEMO_KUAIDI100_SALT"
# The variables the demo config names for the stand-in's key and push salt, which are no secrets.
DEMO_ENV = {DEMO_KEY_ENV: DEMO_KEY, DEMO_SALT_ENV: DEMO_SALT}
DEMO_CALLBACK_URL = "http://127.0.0.1:8080/hooks/kuaidi100"

LINK_SECRET_FILE = "secrets/link.key"
DEMO_STAFF = ("ops", "demo-ops")  # the demo's ops board login
MIN_ORDERS = 100  # fewer cannot give every case its minimum count


@dataclass(frozen=True)
class DemoCompany:
    """What `build_demo_company` wrote."""

    erp_db: Path
    finance_db: Path
    wms_db: Path
    carrier_db: Path
    config_path: Path
    counts: dict[str, int]  # rows written per source table


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
    _remove_earlier_demo(target)

    plan = draw_plan(np.random.Generator(np.random.PCG64(seed)), orders, days, _local_seconds(now))
    say(
        f"planned {len(plan.orders):,} orders, {len(plan.lines['order']):,} lines, "
        f"{len(plan.payments):,} payments, {len(plan.parcels):,} parcels"
    )
    bad = contract_breaking_rows(plan) if bad_rows else {}
    carrier_db = target / "carrier.db"
    jobs = {db: partial(write_source, target / db, tables, plan, bad) for db, tables in SOURCE_TABLES.items()}
    jobs[carrier_db.name] = partial(write_carrier, carrier_db, plan)
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


def use_demo_secrets() -> None:
    """Set the demo config's variables where they are unset; a real config names its own."""
    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)


def _remove_earlier_demo(target: Path) -> None:
    """The databases an earlier build left in `target`, their journals, and the pipeline's warehouse.db."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (*SOURCE_TABLES, "carrier.db", "warehouse.db"):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (target / f"{name}{suffix}").unlink(missing_ok=True)


def _config_text(carrier_db: Path, max_polls: int) -> str:
    # The sandbox path is written absolute: the config resolves relative paths in database URLs only.
    return _config_template().format(
        endpoint=json.dumps(f"sandbox://{carrier_db}"),
        max_polls=max_polls,
        customer=DEMO_CUSTOMER,
        key_env=DEMO_KEY_ENV,
        key=DEMO_KEY,
        salt_env=DEMO_SALT_ENV,
        callback_url=DEMO_CALLBACK_URL,
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


def _local_seconds(now: datetime) -> int:
    local = now.astimezone(ZoneInfo(TIMEZONE)).replace(tzinfo=None)
    return (local - datetime(1970, 1, 1)) // timedelta(seconds=1)
