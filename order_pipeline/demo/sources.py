"""The ERP, finance and WMS databases: the plan rendered in each system's own names and formats.

- `erp.db`, a Kingdee-style ERP: `T_SAL_ORDER`, `T_SAL_ORDERENTRY`, status codes A/C;
- `finance.db`: table `收款单` with Chinese column names and statuses;
- `wms.db`: stock, stock locks, outbound parcels and proofs of delivery.

Each table is rendered whole from the plan, optionally given a few rows that break the source
contract, and written with one executemany.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from order_pipeline.demo.cases import SIGNED, Case
from order_pipeline.demo.plan import Plan
from order_pipeline.demo.random_data import HOUR, concat_strings, daily_ids, date_text, timestamp_text
from order_pipeline.demo.reference_data import CARRIER_CODE, SIGNERS, waybill_numbers

# Per database file, its tables, each with its columns and their SQLite types in column order.
SOURCE_TABLES: dict[str, dict[str, dict[str, str]]] = {
    "erp.db": {
        "T_SAL_ORDER": {
            "FBillNo": "TEXT",
            "FCustName": "TEXT",
            "FPhone": "TEXT",
            "FIdCard": "TEXT",
            "FAddress": "TEXT",
            "FAmount": "REAL",
            "FCurrency": "TEXT",
            "FDate": "TEXT",
            "FPromiseDate": "TEXT",
            "FStatus": "TEXT",
            "FModifyDate": "TEXT",
        },
        "T_SAL_ORDERENTRY": {
            "FEntryID": "INTEGER",
            "FBillNo": "TEXT",
            "FMaterialId": "TEXT",
            "FQty": "REAL",
            "FPrice": "REAL",
        },
    },
    "finance.db": {
        "收款单": {
            "收款单号": "TEXT",
            "订单编号": "TEXT",
            "金额": "REAL",
            "收款时间": "TEXT",
            "凭证号": "TEXT",
            "状态": "TEXT",
            "修改时间": "TEXT",
        },
    },
    "wms.db": {
        "inv_stock": {
            "item_code": "TEXT",
            "qty_on_hand": "INTEGER",
            "qty_reserved": "INTEGER",
            "safety_qty": "INTEGER",
            "last_modified": "TEXT",
        },
        "inv_lock": {
            "lock_id": "TEXT",
            "ref_order": "TEXT",
            "item_code": "TEXT",
            "lock_qty": "INTEGER",
            "lock_status": "TEXT",
            "lock_time": "TEXT",
            "last_modified": "TEXT",
        },
        "outbound": {
            "ref_order": "TEXT",
            "tracking_no": "TEXT",
            "express_company": "TEXT",
            "gross_weight": "REAL",
            "outbound_time": "TEXT",
            "last_modified": "TEXT",
        },
        "pod": {"tracking_no": "TEXT", "signed_by": "TEXT", "signed_time": "TEXT", "photo": "TEXT"},
    },
}
# Indexes the pipeline's reads need: by high-water mark and by order number.
SOURCE_INDEXES = {
    "T_SAL_ORDER": ("FModifyDate", "FBillNo"),
    "T_SAL_ORDERENTRY": ("FBillNo",),
    "收款单": ("修改时间", "订单编号"),
    "inv_stock": ("last_modified",),
    "inv_lock": ("last_modified", "ref_order"),
    "outbound": ("last_modified", "ref_order"),
    "pod": ("signed_time",),
}

Table = dict[str, list]  # column name -> values, in the table's column order
BadRows = Callable[[Table], list[dict]]  # the rows to add to a rendered table


def write_source(path: Path, tables: dict[str, dict[str, str]], plan: Plan, bad: dict[str, BadRows]) -> dict[str, int]:
    """Write one database file of SOURCE_TABLES, with the bad rows given per table: rows written per table."""
    counts = {}
    with closing(connect_for_filling(path)) as conn:
        for name, schema in tables.items():
            table = RENDERERS[name](plan)
            for row in bad[name](table) if name in bad else ():
                _append(table, row)
            counts[name] = _write_table(conn, name, schema, table)
    return counts


def _order_table(plan: Plan) -> Table:
    o, customers = plan.orders, plan.customers
    promise = o["promise"].to_numpy()
    modified = np.maximum(o["ordered"].to_numpy(), o["cancelled_at"].to_numpy())
    return {
        "FBillNo": o["order_no"].tolist(),
        "FCustName": customers["name"].tolist(),
        "FPhone": customers["phone"].tolist(),
        "FIdCard": _nullable(customers["id_card"], customers["with_id"]),
        "FAddress": customers["address"].tolist(),
        "FAmount": (o["amount"] / 100).tolist(),
        "FCurrency": ["CNY"] * len(o),
        "FDate": timestamp_text(o["ordered"].to_numpy()).tolist(),
        "FPromiseDate": _nullable(date_text(promise), promise >= 0),
        "FStatus": np.where(o["cancelled"], "C", "A").tolist(),
        "FModifyDate": timestamp_text(modified).tolist(),
    }


def _line_table(plan: Plan) -> Table:
    lines, skus = plan.lines, plan.skus
    return {
        "FEntryID": (1 + np.arange(len(lines["order"]))).tolist(),
        "FBillNo": plan.orders["order_no"].to_numpy()[lines["order"]].tolist(),
        "FMaterialId": skus["code"][lines["sku"]].tolist(),
        "FQty": lines["qty"].astype(float).tolist(),
        "FPrice": (skus["price"][lines["sku"]] / 100).tolist(),
    }


def _payment_table(plan: Plan) -> Table:
    pay = plan.payments
    booked = pay["status"].ne("failed").to_numpy()
    voucher = np.full(len(pay), "", dtype=object)
    voucher[booked] = daily_ids("记", pay["at"].to_numpy()[booked])
    # A few booked payments lack their voucher number, a fact the pipeline reports as missing.
    has_voucher = booked & (np.arange(len(pay)) % 50 != 7)
    return {
        "收款单号": pay["payment_id"].tolist(),
        "订单编号": plan.orders["order_no"].to_numpy()[pay["order"].to_numpy()].tolist(),
        "金额": (pay["cents"] / 100).tolist(),
        "收款时间": timestamp_text(pay["at"].to_numpy()).tolist(),
        "凭证号": _nullable(voucher, has_voucher),
        "状态": pay["status"].map({"paid": "已收款", "refunded": "已退款", "failed": "失败"}).tolist(),
        "修改时间": timestamp_text(pay["modified"].to_numpy()).tolist(),
    }


def _stock_table(plan: Plan) -> Table:
    """Stock per SKU; reserved is what active locks hold back for orders still in the warehouse."""
    o, lines, skus = plan.orders, plan.lines, plan.skus
    order = lines["order"]
    held = plan.locks & ~o["shipped"].to_numpy()[order] & ~o["cancelled"].to_numpy()[order]
    reserved = np.bincount(lines["sku"][held], lines["qty"][held], minlength=len(skus["code"])).astype(np.int64)
    # The SKUs NOT_LOCKED orders wait for run short: available below safety stock (rule 2).
    waiting = (o["case"].to_numpy()[order] == Case.NOT_LOCKED) & (lines["line_no"] == 0)
    short = pd.unique(lines["sku"][waiting])[: max(2, len(skus["code"]) // 20)]
    available = skus["available"].copy()
    available[short] = skus["short_of"][short]
    return {
        "item_code": skus["code"].tolist(),
        "qty_on_hand": (reserved + available).tolist(),
        "qty_reserved": reserved.tolist(),
        "safety_qty": skus["safety"].tolist(),
        "last_modified": timestamp_text(plan.clock - skus["counted_ago"]).tolist(),
    }


def _lock_table(plan: Plan) -> Table:
    o, lines, locks = plan.orders, plan.lines, plan.locks
    order = lines["order"][locks]
    at = o["locked_at"].to_numpy()[order] + lines["line_no"][locks]  # one line a second
    released = o["cancelled"].to_numpy()[order]
    modified = np.where(released, o["cancelled_at"].to_numpy()[order], at)
    return {
        "lock_id": daily_ids("LK", at).tolist(),
        "ref_order": o["order_no"].to_numpy()[order].tolist(),
        "item_code": plan.skus["code"][lines["sku"][locks]].tolist(),
        "lock_qty": lines["qty"][locks].tolist(),
        "lock_status": np.where(released, "RELEASED", "LOCKED").tolist(),
        "lock_time": timestamp_text(at).tolist(),
        "last_modified": timestamp_text(modified).tolist(),
    }


def _outbound_table(plan: Plan) -> Table:
    parcels = plan.parcels
    shipped = timestamp_text(parcels["shipped"].to_numpy()).tolist()
    weight = parcels["weight"].to_numpy()
    return {
        "ref_order": plan.orders["order_no"].to_numpy()[parcels["order"].to_numpy()].tolist(),
        "tracking_no": parcels["waybill"].tolist(),
        "express_company": CARRIER_CODE[parcels["carrier"].to_numpy()].tolist(),
        "gross_weight": _nullable(weight, ~np.isnan(weight)),
        "outbound_time": shipped,
        "last_modified": shipped,
    }


def _pod_table(plan: Plan) -> Table:
    p = plan.parcels[(plan.parcels["state"] == 3) & plan.parcels["with_pod"]]
    waybill = p["waybill"].to_numpy().astype(str)
    return {
        "tracking_no": waybill.tolist(),
        "signed_by": np.array(SIGNERS)[p["signer"].to_numpy()].tolist(),
        "signed_time": timestamp_text((p["shipped"] + p[f"event_{SIGNED}"]).to_numpy()).tolist(),
        "photo": concat_strings("https://wms.demo.example/pod/", waybill, ".jpg").tolist(),
    }


RENDERERS: dict[str, Callable[[Plan], Table]] = {
    "T_SAL_ORDER": _order_table,
    "T_SAL_ORDERENTRY": _line_table,
    "收款单": _payment_table,
    "inv_stock": _stock_table,
    "inv_lock": _lock_table,
    "outbound": _outbound_table,
    "pod": _pod_table,
}


def contract_breaking_rows(plan: Plan) -> dict[str, BadRows]:
    """Rows that break the source contract, as real systems deliver now and then, around one shipped order.

    Per table, a function of the rendered rows: most bad rows are a good row with one thing wrong.
    """
    o = plan.orders
    victim = int(np.flatnonzero((o["case"] == Case.NATURAL) & o["shipped"] & (o["n_lines"] == 1))[0])
    line = int(np.flatnonzero(plan.lines["order"] == victim)[0])
    payment = int(np.flatnonzero(plan.payments["order"].to_numpy() == victim)[0])
    parcel = int(np.flatnonzero(plan.parcels["order"].to_numpy() == victim)[0])
    stamp = str(timestamp_text(np.array([plan.clock - HOUR]))[0])
    unknown_order = _successor(o["order_no"].iloc[-1])
    other_sku = str(plan.skus["code"][(plan.lines["sku"][line] + 1) % len(plan.skus["code"])])
    # A serial past the last parcel's: a waybill number no parcel has.
    stray_serial = np.array([len(plan.parcels) + 1])
    stray_waybill = str(waybill_numbers(plan.parcels["carrier"].to_numpy()[[parcel]], stray_serial)[0])

    def receipts(t: Table) -> list[dict]:
        good = _row(t, payment)
        new_id = _successor(max(t["收款单号"]))
        return [
            good | {"收款单号": new_id, "金额": -50.0, "修改时间": stamp},
            good | {"收款单号": _successor(new_id), "状态": "处理中", "修改时间": stamp},
            # The same 收款单号 and 修改时间 with another amount: a contradiction, not an update.
            good | {"金额": good["金额"] + 100},
        ]

    return {
        "T_SAL_ORDER": lambda t: [
            _row(t, victim) | {"FBillNo": "", "FModifyDate": stamp},
            _row(t, victim) | {"FBillNo": unknown_order, "FDate": f"{stamp[:4]}-13-45 99:00", "FModifyDate": stamp},
        ],
        "T_SAL_ORDERENTRY": lambda t: [
            _row(t, line) | {"FEntryID": len(t["FEntryID"]) + 1, "FMaterialId": other_sku, "FQty": -1.0},
        ],
        "收款单": receipts,
        "outbound": lambda t: [
            _row(t, parcel)
            | {"ref_order": _successor(unknown_order), "tracking_no": stray_waybill, "last_modified": stamp},
        ],
    }


def _row(table: Table, i: int) -> dict:
    return {column: values[i] for column, values in table.items()}


def _append(table: Table, row: dict) -> None:
    for column, values in table.items():
        values.append(row[column])


def _successor(number: str) -> str:
    """SO20261125000123 -> SO20261125000124: an id that does not exist yet."""
    digits = len(number.rstrip("0123456789"))
    return number[:digits] + str(int(number[digits:]) + 1)


def connect_for_filling(path: Path) -> sqlite3.Connection:
    """A connection to a database file being generated."""
    conn = sqlite3.connect(path)
    # Nothing to protect while a file is being generated: no rollback journal, no fsync.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def _write_table(conn: sqlite3.Connection, name: str, schema: dict[str, str], table: Table) -> int:
    columns = ", ".join(f'"{column}" {kind}' for column, kind in schema.items())
    conn.execute(f'CREATE TABLE "{name}" ({columns})')
    marks = ", ".join("?" * len(schema))
    # Not strict: outbound's outbound_time and last_modified are one list, to which an appended row
    # adds both its values; zip stops at the other columns' length, so only the first is written.
    rows = zip(*(table[c] for c in schema), strict=False)
    with conn:
        count = conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows).rowcount
    # Indexed after loading: building an index once is faster than keeping it up to date row by row.
    for column in SOURCE_INDEXES.get(name, ()):
        conn.execute(f'CREATE INDEX "ix_{name}_{column}" ON "{name}" ("{column}")')
    return count


def _nullable(values: np.ndarray, present: np.ndarray) -> list:
    out = np.asarray(values).astype(object)
    out[~present] = None
    return out.tolist()
