"""The demo company: reproducible, showing every case the pipeline and its alert rules must find, with a config
that maps its sources onto the contract."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import NOW, resolved, warehouse_of

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier.receiver import in_process_deliver
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import load_config
from order_pipeline.contract.schema import carrier_subscriptions, raw_tracking
from order_pipeline.demo.company import DEMO_CUSTOMER, DEMO_KEY, DEMO_KEY_ENV, DemoCompany, build_demo_company
from order_pipeline.domain import carrier_states
from order_pipeline.domain.validation import validate
from order_pipeline.pipeline.loading import read_source
from order_pipeline.pipeline.summary import summarize
from order_pipeline.warehouse.engine import Warehouse
from resources.carrier import SANDBOX_SCHEME

LOCAL_NOW = "2026-11-25 10:00:00"  # NOW in Shanghai, as the sources write time
ORDERS = 300


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoCompany:
    return build_demo_company(tmp_path_factory.mktemp("demo"), ORDERS, now=NOW)


@pytest.fixture(scope="module")
def db(demo):
    """One connection that sees all four sources: erp tables plain, the others as fin., wms., car."""
    with closing(sqlite3.connect(demo.erp_db)) as conn:
        for alias, path in (("fin", demo.finance_db), ("wms", demo.wms_db), ("car", demo.carrier_db)):
            conn.execute(f"ATTACH DATABASE '{path}' AS {alias}")
        yield conn


def _databases(company: DemoCompany) -> list[Path]:
    return [company.erp_db, company.finance_db, company.wms_db, company.carrier_db]


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def _digests(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path)) as conn:
        return {
            t: hashlib.sha256(repr(conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall()).encode()).hexdigest()
            for t in _tables(conn)
        }


def test_same_arguments_give_the_same_rows(demo, tmp_path):
    again = build_demo_company(tmp_path, ORDERS, now=NOW)
    assert again.counts == demo.counts
    for mine, theirs in zip(_databases(demo), _databases(again), strict=True):
        assert _digests(mine) == _digests(theirs), mine.name


def test_another_seed_gives_another_company(demo, tmp_path):
    other = build_demo_company(tmp_path, ORDERS, now=NOW, seed=8)
    assert _digests(other.erp_db) != _digests(demo.erp_db)


def test_counts_are_the_rows_written(demo):
    found = {}
    for path in _databases(demo):
        with closing(sqlite3.connect(path)) as conn:
            found |= {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in _tables(conn)}
    assert found == demo.counts


ORDERS_PAID = """WITH paid AS (SELECT 订单编号 AS order_no, sum(金额) AS amount, count(*) AS n, max(收款时间) AS at
                        FROM fin.收款单 WHERE 状态 = '已收款' GROUP BY 订单编号)
SELECT count(*) FROM T_SAL_ORDER o JOIN paid p ON p.order_no = o.FBillNo WHERE """
COVERED = "p.amount >= o.FAmount - 0.005"
UNLOCKED_LINE = """EXISTS (SELECT 1 FROM T_SAL_ORDERENTRY e WHERE e.FBillNo = o.FBillNo AND NOT EXISTS (
    SELECT 1 FROM wms.inv_lock l WHERE l.ref_order = e.FBillNo AND l.item_code = e.FMaterialId
    AND l.lock_status = 'LOCKED'))"""
NOT_SHIPPED = "NOT EXISTS (SELECT 1 FROM wms.outbound s WHERE s.ref_order = o.FBillNo)"


def payment(status: str) -> str:
    return f"EXISTS (SELECT 1 FROM fin.收款单 p WHERE p.订单编号 = o.FBillNo AND p.状态 = '{status}')"


# Each case as a query counting where it shows in the sources.
CASES = {
    "fully paid": ORDERS_PAID + COVERED,
    "two payments short of the amount": ORDERS_PAID + f"p.n = 2 AND NOT {COVERED}",
    "one payment short of the amount": ORDERS_PAID + "p.n = 1 AND p.amount BETWEEN 0.01 AND o.FAmount - 0.01",
    "refund after payment": "SELECT count(*) FROM fin.收款单 r JOIN T_SAL_ORDER o ON o.FBillNo = r.订单编号 "
    "WHERE r.状态 = '已退款' AND r.修改时间 > r.收款时间 AND o.FStatus = 'C'",
    "failed payment only": f"SELECT count(*) FROM T_SAL_ORDER o WHERE {payment('失败')} "
    f"AND NOT {payment('已收款')} AND NOT {payment('已退款')}",
    "cancelled before payment": f"SELECT count(*) FROM T_SAL_ORDER o WHERE FStatus = 'C' AND NOT {payment('已收款')} "
    f"AND NOT {payment('已退款')}",
    "cancelled after payment, no refund": f"SELECT count(*) FROM T_SAL_ORDER o WHERE FStatus = 'C' "
    f"AND {payment('已收款')} AND NOT {payment('已退款')}",
    "rule 1: paid over 2 h ago, stock not locked": ORDERS_PAID + f"o.FStatus = 'A' AND {COVERED} "
    f"AND p.at < datetime(:now, '-2 hours') AND {NOT_SHIPPED} AND {UNLOCKED_LINE}",
    "rule 2: SKU below safety stock that pending orders need": "SELECT count(*) FROM wms.inv_stock s "
    "WHERE s.qty_on_hand - s.qty_reserved < s.safety_qty AND EXISTS (SELECT 1 FROM T_SAL_ORDERENTRY e "
    "JOIN T_SAL_ORDER o ON o.FBillNo = e.FBillNo WHERE e.FMaterialId = s.item_code AND o.FStatus = 'A' "
    "AND NOT EXISTS (SELECT 1 FROM wms.inv_lock l WHERE l.ref_order = e.FBillNo AND l.item_code = e.FMaterialId "
    "AND l.lock_status = 'LOCKED'))",
    "rule 3: in transit without an update for 48 h": "SELECT count(*) FROM car.carrier_waybills w "
    "WHERE w.state IN (0, 1, 5) AND (SELECT max(time) FROM car.carrier_events e WHERE e.waybill_no = w.waybill_no) "
    "< datetime(:now, '-48 hours')",
    "rule 4: promised within a day, not shipped": "SELECT count(*) FROM T_SAL_ORDER o WHERE o.FStatus = 'A' "
    f"AND o.FPromiseDate <= date(:now, '+1 day') AND {NOT_SHIPPED}",
    "split parcels, one signed and one not": "SELECT count(*) FROM (SELECT s.ref_order FROM wms.outbound s "
    "LEFT JOIN car.carrier_waybills w ON w.waybill_no = s.tracking_no GROUP BY s.ref_order "
    "HAVING count(*) BETWEEN 2 AND 3 AND sum(w.state IS 3) >= 1 AND sum(w.state IS NOT 3) >= 1)",
    "carrier state 2 (疑难)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 2",
    "carrier state 4 (退签)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 4",
    "carrier state 6 (退回)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 6",
    "carrier state 14 (拒签)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 14",
    "out for delivery (5)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 5",
    "signed (3)": "SELECT count(*) FROM car.carrier_waybills WHERE state = 3 AND ischeck = 1",
    "shipped, no carrier record yet": "SELECT count(*) FROM wms.outbound s "
    "JOIN T_SAL_ORDER o ON o.FBillNo = s.ref_order "
    "WHERE s.tracking_no NOT IN (SELECT waybill_no FROM car.carrier_waybills)",
    "shunfeng parcel with the order's phone tail": "SELECT count(*) FROM wms.outbound s "
    "JOIN car.carrier_waybills w ON w.waybill_no = s.tracking_no JOIN T_SAL_ORDER o ON o.FBillNo = s.ref_order "
    "WHERE w.com = 'shunfeng' AND w.phone_tail = substr(o.FPhone, -4)",
    "proof of delivery": "SELECT count(*) FROM wms.pod d JOIN car.carrier_waybills w ON w.waybill_no = d.tracking_no "
    "WHERE w.state = 3",
    "parcel without weight": "SELECT count(*) FROM wms.outbound WHERE gross_weight IS NULL",
}


@pytest.mark.parametrize("case", CASES)
def test_every_case_is_there(db, case):
    assert db.execute(CASES[case], {"now": LOCAL_NOW}).fetchone()[0] >= 1


def test_orders_spread_over_the_window_and_never_in_the_future(db):
    first, last = db.execute(
        "SELECT min(FDate), max(FDate) FROM T_SAL_ORDER WHERE FDate LIKE '____-__-__ __:__:__' AND FDate < '2026-13'"
    ).fetchone()
    assert "2026-10-26 10:00:00" <= first < "2026-10-30" and last <= LOCAL_NOW
    for table, column in (
        ("fin.收款单", "修改时间"),
        ("wms.inv_lock", "last_modified"),
        ("wms.outbound", "outbound_time"),
        ("wms.pod", "signed_time"),
        ("car.carrier_events", "time"),
    ):
        assert db.execute(f"SELECT max({column}) FROM {table}").fetchone()[0] <= LOCAL_NOW, table


def test_carrier_state_matches_the_newest_event(db):
    rows = db.execute(
        "SELECT w.state, (SELECT status FROM car.carrier_events e WHERE e.waybill_no = w.waybill_no "
        "ORDER BY time DESC LIMIT 1) FROM car.carrier_waybills w"
    ).fetchall()
    assert rows and all(carrier_states.STATE_LABEL[state] == status for state, status in rows)
    events, parcels = db.execute("SELECT count(*), count(DISTINCT waybill_no) FROM car.carrier_events").fetchone()
    assert 4.5 <= events / parcels <= 6.5
    with_phone = db.execute(
        "SELECT count(*) FROM car.carrier_events "
        "WHERE context GLOB '*1[3-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]*'"
    ).fetchone()[0]
    assert with_phone > 0  # courier mobiles: what the tracking page must mask


def test_sandbox_answers_the_demo_waybills(demo, db):
    def ask(com, num, phone=None):
        form = kuaidi100.query_form(com, num, phone, DEMO_CUSTOMER, DEMO_KEY)
        return carrier_sandbox.answer(demo.carrier_db, form, DEMO_CUSTOMER, DEMO_KEY)

    num, phone = db.execute(
        "SELECT w.waybill_no, o.FPhone FROM car.carrier_waybills w JOIN wms.outbound s "
        "ON s.tracking_no = w.waybill_no JOIN T_SAL_ORDER o ON o.FBillNo = s.ref_order "
        "WHERE w.com = 'shunfeng' AND w.state = 3"
    ).fetchone()
    answer = kuaidi100.parse_answer(ask("shunfeng", num, phone))
    assert answer.is_signed and answer.category == "signed" and len(answer.events) >= 5
    assert ask("shunfeng", num)["returnCode"] == carrier_sandbox.PHONE_MISMATCH[0]
    com, untracked = db.execute(
        "SELECT express_company, tracking_no FROM wms.outbound "
        "WHERE tracking_no NOT IN (SELECT waybill_no FROM car.carrier_waybills)"
    ).fetchone()
    assert ask(com, untracked, phone)["returnCode"] == carrier_sandbox.NO_RECORD[0]


def test_config_loads_and_points_at_the_demo(demo):
    text = demo.config_path.read_text(encoding="utf-8")
    assert "url: sqlite:///erp.db" in text and "timezone: Asia/Shanghai" in text
    cfg = load_config(demo.config_path)
    assert set(cfg.sources) == set(SOURCE_ENTITIES)
    assert cfg.carrier.endpoint == f"sandbox://{demo.carrier_db}"
    assert cfg.carrier.customer.value == DEMO_CUSTOMER and cfg.carrier.key.env == DEMO_KEY_ENV
    assert cfg.carrier.max_polls_per_run >= demo.counts["carrier_waybills"]


def _rejects(company: DemoCompany) -> dict[str, list[str]]:
    """Every source read through the config and checked against the contract: reasons of the rejected rows."""
    cfg = load_config(company.config_path)
    found = {}
    for name, sc in cfg.sources.items():
        engine = sa.create_engine(resolved(sc.url))
        _, rejects = validate(SOURCE_ENTITIES[name], read_source(engine, sc), sc.timezone)
        engine.dispose()
        found[name] = sorted(rejects["reason"])
    return found


def test_only_the_bad_rows_break_the_contract(demo, db):
    duplicate = "duplicate payment_id with conflicting values"
    assert _rejects(demo) == {
        "orders": ["missing order_no", "unparseable ordered_at"],
        "order_lines": ["negative qty"],
        "payments": [duplicate, duplicate, "negative amount", "unknown status"],
        "inventory": [],
        "reservations": [],
        "shipments": [],
        "deliveries": [],
    }
    orphans = db.execute("SELECT count(*) FROM wms.outbound WHERE ref_order NOT IN (SELECT FBillNo FROM T_SAL_ORDER)")
    assert orphans.fetchone()[0] == 1


def test_without_bad_rows_every_row_keeps_the_contract(tmp_path):
    clean = build_demo_company(tmp_path, ORDERS, now=NOW, bad_rows=False)
    assert all(not reasons for reasons in _rejects(clean).values())
    with closing(sqlite3.connect(clean.wms_db)) as conn:
        conn.execute(f"ATTACH DATABASE '{clean.erp_db}' AS erp")
        assert (
            conn.execute(
                "SELECT count(*) FROM outbound WHERE ref_order NOT IN (SELECT FBillNo FROM erp.T_SAL_ORDER)"
            ).fetchone()[0]
            == 0
        )


def test_rebuilding_replaces_the_earlier_demo_and_its_warehouse(tmp_path):
    (tmp_path / "warehouse.db").write_text("stale")
    first = build_demo_company(tmp_path, 200, now=NOW)
    second = build_demo_company(tmp_path, ORDERS, now=NOW)
    assert not (tmp_path / "warehouse.db").exists()
    assert second.counts["T_SAL_ORDER"] > first.counts["T_SAL_ORDER"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"orders": 50, "now": NOW}, "orders"),
        ({"days": 5, "now": NOW}, "days"),
        ({"now": datetime(2026, 11, 25, 10, 0)}, "timezone-aware"),
    ],
)
def test_rejects_arguments_it_cannot_honour(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_demo_company(tmp_path, **kwargs)


def test_the_demo_subscribes_its_unsigned_waybills_and_the_stand_ins_pushes_reach_the_receiver(materialized_company):
    config = load_config(materialized_company / "order_pipeline.yaml")
    engine = Warehouse(warehouse_of(config)).engine
    sub, t = carrier_subscriptions, raw_tracking
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(sub.c.state, sa.func.count()).group_by(sub.c.state)).all())
        unsigned = conn.execute(
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.is_signed.is_(False), sa.func.coalesce(t.c.state, -1) != 3)
        ).scalar_one()
    # Every waybill still travelling after the first look is subscribed; none was refused.
    assert set(states) == {"subscribed"} and 0 < states["subscribed"] >= unsigned

    db = Path(config.carrier.endpoint.removeprefix(SANDBOX_SCHEME))
    deliver = in_process_deliver(engine, config.carrier.push_salt.resolve() or "", lambda: NOW)
    pushed = carrier_sandbox.push_updates(db, NOW, deliver)
    assert pushed and all(p.delivered for p in pushed)
    line = next(line for line in summarize(engine).splitlines() if line.startswith("快递100"))
    assert f"last heard by push {len(pushed)}," in line and f"subscribed {states['subscribed']}" in line
    engine.dispose()
