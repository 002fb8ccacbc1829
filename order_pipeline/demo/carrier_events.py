"""The carrier sandbox's database, `carrier.db`: the waybills the carrier knows and their events.

`carrier_sandbox` answers Kuaidi100 queries from it. Each event is worded as Chinese carriers
word theirs, with the cities, hubs and couriers on the parcel's way.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.demo.cases import (
    AT_DEST_HUB,
    AT_ORIGIN_HUB,
    DISPATCH,
    EVENT_COLUMNS,
    EVENTS_TO_STATE,
    LEFT_ORIGIN_HUB,
    PICKUP,
    SIGNED,
)
from order_pipeline.demo.plan import Plan
from order_pipeline.demo.random_data import concat_strings, ranks_in_groups, timestamp_text
from order_pipeline.demo.reference_data import CARRIER_CODE, CARRIERS, CITIES, SIGNERS, SURNAMES, WAREHOUSES
from order_pipeline.demo.sources import connect_for_filling
from order_pipeline.domain import carrier_states

EVENT_CHUNK = 200_000  # parcels per batch of rendered carrier events: bounds memory at a million orders

# Lookups by index, for rendering whole arrays at once.
CITY = np.array([c[1] for c in CITIES])
AREA = np.array([c[1] if c[0] == c[1] else f"{c[0]},{c[1]}" for c in CITIES])  # Kuaidi100 areaName
HUB = np.array([c[1].removesuffix("市") + "转运中心" for c in CITIES])
DISTRICT = np.array([c[2] for c in CITIES])
WAREHOUSE_CITY = np.array([w[0] for w in WAREHOUSES])
WAREHOUSE_DISTRICT = np.array([w[1] for w in WAREHOUSES])
CARRIER_NAME = np.array([c[1] for c in CARRIERS])


def write_carrier(path: Path, plan: Plan) -> dict[str, int]:
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
                    strict=True,
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
        status[m] = carrier_states.STATE_LABEL[int(-kd if kd < 0 else EVENTS_TO_STATE[kd])]
    return zip(
        p["waybill"].to_numpy()[i].tolist(),
        timestamp_text(time).tolist(),
        context.tolist(),
        area.tolist(),
        status.tolist(),
        strict=True,
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
