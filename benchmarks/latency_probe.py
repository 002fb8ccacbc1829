"""What `bench_latency.py` reads back: hop times from the Dagster instance and the warehouse, idleness, CPU.

Everything here reads what the topology recorded (ticks, run records, materializations, the
customer ledger) and assumes no interval: idleness is "no run in flight, and the automation
sensor has looked again since the last run ended", whatever its interval is.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorState, InstigatorTick
from latency_changes import RAW_ASSET, Change

AUTOMATION_SENSOR = "follow_sources"  # sensors/automation.py
ALERT_SENSOR = "alert_dispatch"  # sensors/alerts.py
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
HOPS = [
    ("tick", "the change's sensor tick that requested the run (push: recorded raw_tracking)"),
    ("submitted", "raw run created"),
    ("started", "raw run started (its worker process is up)"),
    ("raw", "raw asset materialized"),
    ("auto_sub", "the run that materialized unified_orders created (automation sensor)"),
    ("auto_start", "that run started"),
    ("unified", "unified_orders materialized"),
    ("published", "order_tracking_snapshot materialized"),
    ("alert_tick", "the first alert_dispatch tick after it started"),
    ("alert", "alert (or resolve note) at the webhook: the total"),
    ("customer", "customer_notifications row created"),
]
# A hop's own time counts from the first of these that happened (none: from the commit).
BEFORE = {
    "submitted": ["tick"],
    "started": ["submitted"],
    "raw": ["started", "tick"],
    "auto_sub": ["raw"],
    "auto_start": ["auto_sub"],
    "unified": ["auto_start", "raw"],
    "published": ["unified"],
    "alert_tick": ["published"],
    "alert": ["alert_tick", "published"],
    "customer": ["published"],
}


def step(hops: dict[str, float | None], name: str) -> float | None:
    at = hops.get(name)
    if at is None:
        return None
    return at - next((t for b in BEFORE.get(name, []) if (t := hops.get(b)) is not None), 0.0)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _epoch(t: datetime | float | None) -> float | None:
    if t is None or isinstance(t, float | int):
        return t
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def sensor_states(instance: dg.DagsterInstance) -> dict[str, InstigatorState]:
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return {s.instigator_name: s for s in states}


def ticks(instance: dg.DagsterInstance, state: InstigatorState, after: float) -> list[InstigatorTick]:
    """The sensor's ticks that started after `after`, oldest first."""
    found = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
    return sorted(found, key=lambda t: t.timestamp)


def _last_run_end(instance: dg.DagsterInstance) -> tuple[int, float]:
    """(runs in flight, the newest time a run was created or ended)."""
    active = instance.get_runs_count(dg.RunsFilter(statuses=ACTIVE))
    records = instance.get_run_records(limit=3)
    newest = max([_epoch(r.end_time) or _epoch(r.create_timestamp) or 0.0 for r in records] or [0.0])
    return active, newest


def wait_quiet(instance: dg.DagsterInstance, check: Callable[[], None], timeout: float = 600) -> None:
    """No run in flight, and the automation sensor ticked (and finished) since the last run ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        check()
        active, newest = _last_run_end(instance)
        auto = sensor_states(instance).get(AUTOMATION_SENSOR)
        if active == 0 and auto is not None:
            after = [t for t in ticks(instance, auto, newest) if t.end_timestamp is not None]
            if after and _last_run_end(instance)[0] == 0:
                return
        time.sleep(0.5)
    print(f"  (runs still in flight after {timeout:.0f} s; going on)", flush=True)


def tick_gap(instance: dg.DagsterInstance, sensor: str) -> float:
    """The median time between the sensor's last ticks: its interval as the daemon runs it."""
    state = sensor_states(instance).get(sensor)
    starts = [t.timestamp for t in ticks(instance, state, time.time() - 3600)][-6:] if state else []
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return statistics.median(gaps) if gaps else 0.0


def wait_idle(instance: dg.DagsterInstance, since: float, settle: float, check: Callable[[], None]) -> None:
    """Quiet, every sensor ticked since `since`, and no run created for `settle` seconds."""
    deadline = since + 900
    while time.time() < deadline:
        wait_quiet(instance, check)
        states = sensor_states(instance)
        ticked = states and all(ticks(instance, s, since) for s in states.values())
        _, newest = _last_run_end(instance)
        if ticked and time.time() - max(newest, since) >= settle:
            return
        time.sleep(1)
    print("  (not idle after 15 min; going on)", flush=True)


def _materializations(instance: dg.DagsterInstance, asset: str, after: float) -> list[dg.EventLogRecord]:
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_timestamp=after)
    return list(instance.fetch_materializations(flt, limit=20, ascending=True).records)


def _run(instance: dg.DagsterInstance, run_id: str | None):
    if not run_id:
        return None
    records = instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))
    return records[0] if records else None


def customer_message(warehouse: sa.Engine, order_no: str, after: float) -> float | None:
    with warehouse.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT created_at FROM customer_notifications WHERE order_no = :o"), {"o": order_no}
        ).all()
    times = [_epoch(r[0] if isinstance(r[0], datetime) else datetime.fromisoformat(str(r[0]))) for r in rows]
    return min((t for t in times if t is not None and t >= after - 0.5), default=None)


def hops(
    instance: dg.DagsterInstance,
    change: Change,
    sensor: str,
    first_alert: Callable[[str, float], float | None],
    warehouse: sa.Engine,
) -> dict[str, float | None]:
    """Each hop's time in seconds after the commit (None: it did not happen)."""
    t0, at = change.committed, {}
    states = sensor_states(instance)
    state = states.get(sensor)
    raw = _materializations(instance, RAW_ASSET[change.kind], t0)
    if raw:
        at["raw"] = raw[0].timestamp
    # The tick that requested the load, or (a push) the one that recorded the materialization itself:
    # Dagster counts a tick that only reports asset events as skipped.
    seen = [
        t
        for t in (ticks(instance, state, t0 - 120) if state else [])
        if t.end_timestamp is not None
        and t.end_timestamp >= t0
        and (t.run_ids or ("raw" in at and t.timestamp - 0.5 <= at["raw"] <= t.end_timestamp + 0.5))
    ]
    if seen:
        at["tick"] = seen[0].end_timestamp
        run = _run(instance, seen[0].run_ids[0] if seen[0].run_ids else None)
        if run is not None:
            at["submitted"], at["started"] = _epoch(run.create_timestamp), _epoch(run.start_time)
    unified = _materializations(instance, "unified_orders", at.get("raw") or t0)
    if unified:
        at["unified"] = unified[0].timestamp
        run = _run(instance, unified[0].run_id)
        if run is not None:
            at["auto_sub"], at["auto_start"] = _epoch(run.create_timestamp), _epoch(run.start_time)
        published = _materializations(instance, "order_tracking_snapshot", at["unified"])
        if published:
            at["published"] = published[0].timestamp
            alert_state = states.get(ALERT_SENSOR)
            later = ticks(instance, alert_state, at["published"]) if alert_state else []
            if later:
                at["alert_tick"] = later[0].timestamp
    at["alert"] = first_alert(change.order_no, t0)
    at["customer"] = customer_message(warehouse, change.order_no, t0)
    return {name: (at[name] - t0 if at.get(name) is not None else None) for name, _ in HOPS}


# --- idle cost -----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime+cutime+cstime in ticks) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def tree_ticks(root: int, stats: dict[int, tuple[int, int]]) -> int:
    """CPU ticks of `root` and its live descendants (children that exited are in their parent's cutime)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo += children.get(pid, [])
    return total


class CpuWindow:
    """Machine-wide CPU use since it was made, from /proc/stat."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all, idle + iowait

    def busy_cores(self) -> float:
        total, idle = self._read()
        dt, di = total - self.start[0], idle - self.start[1]
        return (os.cpu_count() or 1) * (1 - di / dt) if dt else 0.0


def print_idle(instance: dg.DagsterInstance, procs: dict, seconds: float) -> None:
    states = sensor_states(instance)
    runs_before = instance.get_runs_count()
    w0, before, machine = time.time(), _stats(), CpuWindow()
    time.sleep(seconds)
    w1, after = time.time(), _stats()
    busy = machine.busy_cores()
    print(f"\nIdle cost over {w1 - w0:.0f} s (runs created meanwhile: {instance.get_runs_count() - runs_before}):")
    for name, proc in procs.items():
        used = (tree_ticks(proc.pid, after) - tree_ticks(proc.pid, before)) / CLK_TCK
        print(f"  {name:<12} {100 * used / (w1 - w0):5.1f} % of one core ({used:.2f} s CPU)")
    print(f"  machine      {busy:.2f} of {os.cpu_count()} cores busy (everything, other work included); load {load()}")
    print(f"  {'sensor tick':<28}{'ticks':>6}{'p50 s':>8}{'max s':>8}  statuses")
    every = []
    for name, state in sorted(states.items()):
        window = [t for t in ticks(instance, state, w0) if t.timestamp <= w1 and t.end_timestamp is not None]
        durations = [(t.end_timestamp or t.timestamp) - t.timestamp for t in window]
        every += durations
        kinds = sorted({t.status.value for t in window})
        p50 = f"{statistics.median(durations):8.3f}{max(durations):8.3f}" if durations else f"{'-':>8}{'-':>8}"
        print(f"  {name:<28}{len(window):>6}{p50}  {', '.join(kinds)}")
    if every:
        print(f"  {'all sensors':<28}{len(every):>6}{statistics.median(every):8.3f}{max(every):8.3f}")
