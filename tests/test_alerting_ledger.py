"""The alert ledger across evaluations: dedup, cool-down, escalation and resolution, the message,
crashes between the steps, run failures, and its tables in an empty warehouse. Time is passed in, never slept."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import (
    GROUPS,
    NOW,
    D,
    H,
    M,
    S,
    alerting_for,
    deliveries,
    ledger_row,
    order,
    outbox,
    paid_order,
    publish_rows,
    tick,
)

from order_pipeline.alerts import ledger as alert_ledger
from order_pipeline.alerts import queue as alert_queue_ops
from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.alerts.evaluation import run_entity, run_label
from order_pipeline.contract.schema import alert_queue
from order_pipeline.warehouse.engine import Warehouse

# --- dedup, cool-down, escalation, resolution ----------------------------------------------------------


def test_sent_once_resent_after_the_cooldown_escalated_then_resolved(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)

    ev, _ = tick(alerting, dispatcher, NOW)
    assert ev.breaching["paid_not_locked"] == 1
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["wh_box"]
    assert sent["recipient"].tolist() == ["13800000000"]
    first = ledger_row(engine, "paid_not_locked", "SO-1")
    assert first["attempts"] == 1 and first["escalation_level"] == 0 and first["resolved_at"] is None
    assert pd.Timestamp(first["notified_at"]).tz_localize(None) >= pd.Timestamp(NOW).tz_localize(None)

    for later in (M, 2 * H - S):  # within the cool-down: nothing new
        tick(alerting, dispatcher, NOW + later)
    assert len(outbox(engine)) == 1

    tick(alerting, dispatcher, NOW + 2 * H)  # the cool-down passed: re-sent once
    assert outbox(engine)["channel"].tolist() == ["wh_box", "wh_box"]
    tick(alerting, dispatcher, NOW + 2 * H + M)
    assert len(outbox(engine)) == 2

    tick(alerting, dispatcher, NOW + 4 * H)  # open for escalate_after: the ops lead hears, and the group again
    sent = outbox(engine)
    assert sent["channel"].tolist()[2:] == ["wh_box", "lead_box"]
    assert sent["title"].iloc[-1].startswith("【升级】")
    assert ledger_row(engine, "paid_not_locked", "SO-1")["escalation_level"] == 1
    tick(alerting, dispatcher, NOW + 8 * H + M)  # max_escalations is 1: no second escalation
    assert "lead_box" not in outbox(engine)["channel"].tolist()[4:]

    publish_rows(engine, [order("SO-1", "locked", paid_at=NOW - 3 * H, locked_at=NOW + 9 * H)], batch=2)
    tick(alerting, dispatcher, NOW + 9 * H)
    row = ledger_row(engine, "paid_not_locked", "SO-1")
    assert row["resolved_at"] is not None
    notes = outbox(engine).iloc[-2:]
    assert set(notes["channel"]) == {"wh_box", "lead_box"}  # told where it was heard, escalation included
    assert all(t.startswith("【已恢复】") for t in notes["title"])
    count = len(outbox(engine))
    tick(alerting, dispatcher, NOW + 9 * H + M)
    assert len(outbox(engine)) == count


def test_a_flapping_condition_waits_out_its_cooldown(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine, alerts={**GROUPS["alerts"], "resolve_note": False})
    tick(alerting, dispatcher, NOW)
    publish_rows(engine, [order("SO-1", "locked", paid_at=NOW - 3 * H, locked_at=NOW)], batch=2)
    tick(alerting, dispatcher, NOW + M)
    publish_rows(engine, [paid_order()], batch=3)  # released again
    tick(alerting, dispatcher, NOW + 2 * M)
    row = ledger_row(engine, "paid_not_locked", "SO-1")
    assert row["resolved_at"] is None and len(outbox(engine)) == 1
    tick(alerting, dispatcher, NOW + 2 * H)
    assert len(outbox(engine)) == 2


def test_notified_and_escalated_at_once_a_channel_hears_it_once(tmp_path, engine):
    # promise_due_not_shipped tells the ops lead, and escalates to the ops lead.
    publish_rows(engine, [order("SO-7", "ordered", promised_date=date(2026, 11, 26))])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    for later in (0 * H, 2 * H):
        tick(alerting, dispatcher, NOW + later)
    assert outbox(engine)["channel"].tolist() == ["lead_box", "lead_box"]

    tick(alerting, dispatcher, NOW + 4 * H)  # re-notification and escalation fall due together
    sent = outbox(engine).iloc[2:]
    assert sent["channel"].tolist() == ["lead_box"]
    assert sent["title"].iloc[0].startswith("【升级】")
    row = ledger_row(engine, "promise_due_not_shipped", "SO-7")
    assert row["escalation_level"] == 1 and row["queued_at"] is not None
    tick(alerting, dispatcher, NOW + 4 * H + M)
    assert len(outbox(engine)) == 3


def test_a_channel_both_groups_share_gets_one_escalation_with_both_mentions(tmp_path, engine):
    publish_rows(engine, [paid_order()])
    groups = {**GROUPS["alerts"]["groups"], "ops_lead": {"channels": ["wh_box"], "mentions": ["13900000000"]}}
    alerting, dispatcher = alerting_for(tmp_path, engine, alerts={**GROUPS["alerts"], "groups": groups})
    for later in (0 * H, 2 * H, 4 * H):
        tick(alerting, dispatcher, NOW + later)
    last = outbox(engine).iloc[2:]
    assert len(last) == 1 and last["title"].iloc[0].startswith("【升级】")
    assert last["recipient"].iloc[0] == "13800000000, 13900000000"
    assert deliveries(engine)["kind"].tolist()[2:] == ["escalate"]


def test_dedup_across_orders_and_ticks(tmp_path, engine):
    publish_rows(engine, [paid_order("A"), paid_order("B"), order("C", "locked", locked_at=NOW)])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    for minutes in range(3):
        tick(alerting, dispatcher, NOW + minutes * M)
    assert sorted(outbox(engine)["title"].str.split().str[-1]) == ["A", "B"]
    assert deliveries(engine)["ok"].all()


# --- the message ---------------------------------------------------------------------------------------


def test_message_is_short_chinese_with_order_stage_wait_owner_and_link(tmp_path, engine):
    publish_rows(engine, [paid_order(hours=3)])
    alerting, dispatcher = alerting_for(
        tmp_path, engine, alerts={**GROUPS["alerts"], "board_url": "https://ops.example.com"}
    )
    tick(alerting, dispatcher, NOW + 15 * M)
    body = outbox(engine)["body"].iloc[0]
    assert "SO-1" in body and "支付确认" in body and "已等待：3小时15分" in body and "负责人：仓库" in body
    assert "https://ops.example.com/ops/order/SO-1" in body
    assert len(body.encode()) < 600


def test_stuck_parcel_marks_the_order_high_risk(tmp_path, engine):
    publish_rows(
        engine,
        [
            order(
                "SO-9",
                "in_transit",
                shipped_at=NOW - 3 * D,
                latest_event_at=NOW - 50 * H,
                parcel_count=1,
                waybill_nos="YT123",
            )
        ],
    )
    alerting, dispatcher = alerting_for(tmp_path, engine)
    tick(alerting, dispatcher, NOW)
    row = ledger_row(engine, "stuck_parcel", "SO-9")
    assert row["risk"] == "high" and row["severity"] == "critical"
    assert outbox(engine)["channel"].tolist() == ["cs_box"]
    assert "风险：高" in outbox(engine)["body"].iloc[0]


# --- crashes between the steps ----------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies: nothing after this point runs."""


def test_a_crash_between_send_and_record_never_sends_twice_within_the_cooldown(tmp_path, engine, monkeypatch):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)

    def crash(*args, **kwargs):
        raise Crash()

    with monkeypatch.context() as m:
        m.setattr(alert_queue_ops, "record_outcome", crash)
        with pytest.raises(Crash):
            tick(alerting, dispatcher, NOW)
    assert len(outbox(engine)) == 1  # it went out, but the ledger never heard
    assert deliveries(engine).empty

    for later in (M, H, 2 * H - S):  # restarted: the claim is in doubt, so nothing is sent again
        tick(alerting, dispatcher, NOW + later)
    assert len(outbox(engine)) == 1

    tick(alerting, dispatcher, NOW + 2 * H)  # a cool-down later: sent once more, not twice
    assert len(outbox(engine)) == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.select(alert_queue.c.status)).scalars().all()
    assert sorted(rows) == ["sent", "superseded"]


def test_a_crash_between_claim_and_send_delays_but_never_loses(tmp_path, engine, monkeypatch):
    publish_rows(engine, [paid_order()])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    import order_pipeline.alerts.dispatch as dispatch

    def crash(*args, **kwargs):
        raise Crash()

    alerting.evaluate(NOW)
    with monkeypatch.context() as m:
        m.setattr(dispatch, "deliver", crash)
        with pytest.raises(Crash):
            dispatcher.drain(NOW)
    assert outbox(engine).empty
    dispatcher.drain(NOW + H)
    assert outbox(engine).empty  # in doubt until the claim expires
    dispatcher.drain(NOW + 2 * H)
    assert len(outbox(engine)) == 1


def test_a_crash_mid_send_holds_back_only_the_message_in_flight(tmp_path, engine, monkeypatch):
    publish_rows(engine, [paid_order(f"SO-{i}") for i in range(1, 7)])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    alerting.evaluate(NOW)

    def crash(self, msg):
        raise Crash()

    with monkeypatch.context() as m:
        m.setattr(OutboxChannel, "send", crash)
        with pytest.raises(Crash):
            dispatcher.drain(NOW)
    assert outbox(engine).empty

    dispatcher.drain(NOW + M)  # restarted: what was never tried goes out now
    assert _orders(outbox(engine)) == ["SO-2", "SO-3", "SO-4", "SO-5", "SO-6"]
    dispatcher.drain(NOW + 2 * H - S)  # the one in flight may have gone out: it waits out its claim
    assert len(outbox(engine)) == 5
    dispatcher.drain(NOW + 2 * H)
    assert _orders(outbox(engine))[-1] == "SO-1"


# A dispatcher in its own process, killed while its first message is on the wire: the send blocks
# until the test has killed the process.
_KILLED_CHILD = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from helpers import NOW, alerting_for

from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.warehouse.engine import Warehouse


def on_the_wire(self, msg):
    print("sending", msg.title, flush=True)
    sys.stdin.read()


OutboxChannel.send = on_the_wire
engine = Warehouse(sys.argv[1]).engine
alerting, dispatcher = alerting_for(Path(sys.argv[2]), engine)
dispatcher.drain(NOW)
"""


def test_a_dispatcher_killed_mid_send_holds_back_only_the_message_in_flight(tmp_path, warehouse_url, engine):
    publish_rows(engine, [paid_order(f"SO-{i}") for i in range(1, 7)])
    alerting, dispatcher = alerting_for(tmp_path, engine)
    alerting.evaluate(NOW)
    tests = Path(__file__).resolve().parent
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, warehouse_url, str(tmp_path), str(tests)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    child.kill()  # SIGKILL: nothing after the send runs, not even a finally
    child.wait()
    assert line.startswith("sending") and line.rstrip().endswith("SO-1"), child.stderr.read()
    assert outbox(engine).empty

    tick(alerting, dispatcher, NOW + M)
    assert _orders(outbox(engine)) == ["SO-2", "SO-3", "SO-4", "SO-5", "SO-6"]
    tick(alerting, dispatcher, NOW + 2 * H - S)
    assert len(outbox(engine)) == 5
    tick(alerting, dispatcher, NOW + 2 * H)  # a cool-down later SO-1 goes out once, with the others' re-sends
    assert _orders(outbox(engine))[5:].count("SO-1") == 1


def _orders(sent: pd.DataFrame) -> list[str]:
    return sent["title"].str.split().str[-1].tolist()


# --- run failures ---------------------------------------------------------------------------------


def test_a_failed_run_alerts_the_data_team_once_and_a_success_resolves_it(tmp_path, engine):
    alerting, dispatcher = alerting_for(tmp_path, engine)
    failed = "assets:raw_order_lines,raw_orders"
    for minutes in (0, 5):
        alerting.run_failed(
            failed, "raw_order_lines 等2个资产", f"run-{minutes}", "raw_orders: cannot reach ERP", NOW + minutes * M
        )
        dispatcher.drain(NOW + minutes * M)
    sent = outbox(engine)
    assert sent["channel"].tolist() == ["data_box"] and "cannot reach ERP" in sent["body"].iloc[0]
    alerting.run_succeeded("__ASSET_JOB", ["raw_orders"], NOW + 8 * M)  # covers only part of it
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is None
    alerting.run_succeeded("__ASSET_JOB", ["raw_orders", "raw_order_lines", "unified_orders"], NOW + 10 * M)
    dispatcher.drain(NOW + 10 * M)
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is not None
    assert (
        outbox(engine)["title"].iloc[-1] == "【已恢复】流水线运行失败 raw_order_lines 等2个资产"
    )  # not the ledger key


def test_each_sources_change_runs_fail_and_recover_on_their_own(tmp_path, engine):
    alerting, dispatcher = alerting_for(tmp_path, engine)
    keys = ["raw_orders", "raw_order_lines", "unified_orders"]
    failed = run_entity("source_change", keys, "orders")
    alerting.run_failed(failed, run_label("source_change", keys, "orders"), "run-1", "cannot reach ERP", NOW)
    dispatcher.drain(NOW)
    assert outbox(engine)["title"].iloc[0].endswith("source_change（orders）")
    alerting.run_succeeded("source_change", ["raw_payments", "unified_orders"], NOW + 5 * M, "payments")
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is None  # another source's run
    alerting.run_succeeded("source_change", keys, NOW + 8 * M, "orders")
    assert ledger_row(engine, "run_failure", failed)["resolved_at"] is not None


def test_the_alerting_creates_its_tables_in_an_empty_warehouse(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = Warehouse(url).engine  # no create_schema: the alert tables are the alerting's to create
    alerting, dispatcher = alerting_for(tmp_path, engine)
    assert {"order_alerts", "alert_queue", "alert_deliveries", "alert_outbox"} <= set(
        sa.inspect(engine).get_table_names()
    )
    alerting.run_failed("order_pipeline", "order_pipeline", "run-1", "boom", NOW)
    assert dispatcher.drain(NOW).delivered == 1
    alert_ledger.ensure_schema(engine)  # again: nothing to do, nothing lost
    assert len(outbox(engine)) == 1
