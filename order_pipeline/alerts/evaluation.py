"""Evaluate the rules and source freshness, and bring the ledger and the queue up to date.

`Alerting.evaluate(now)` is what the alert sensor and `order-pipeline run` call: one SELECT per
rule over the published snapshot, the freshness of every source, then one transaction that
updates `order_alerts` and queues the messages that are due (see `alerts.ledger` for the order
of record and send). Sending is the dispatcher's part (`alerts.dispatch`), which holds the
channels. Customers are told by `notify`, not here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from order_pipeline.alerts import ledger, queue
from order_pipeline.alerts.digests import queue_digests
from order_pipeline.alerts.freshness import SourceAge, source_ages
from order_pipeline.alerts.messages import (
    MessageText,
    freshness_message,
    freshness_recovered,
    rule_message,
    rule_summary,
    run_failure_message,
    unreachable_message,
)
from order_pipeline.alerts.rules.model import Rule
from order_pipeline.alerts.rules.sql import evaluate as evaluate_rules
from order_pipeline.alerts.settings import AlertSettings, load_alert_settings
from order_pipeline.contract.config import Config
from order_pipeline.contract.schema import pipeline_state
from order_pipeline.domain.times import aware_utc
from order_pipeline.warehouse.state import PUBLISHED_BATCH

log = logging.getLogger(__name__)

FRESHNESS_RULE = "source_freshness"
RUN_FAILURE_RULE = "run_failure"
UNREACHABLE_RULE = "source_unreachable"
ASSETS_PREFIX = "assets:"

_schema_ready: set[str] = set()


def _no_message(row: dict, kind: str, at: Any) -> tuple[str, MessageText]:
    """The render of a sync without breaches, which renders no message."""
    raise AssertionError("a sync without breaches renders no message")


@dataclass
class Evaluation:
    now: datetime
    breaching: dict[str, int]  # rule id -> offending orders or SKUs now
    results: dict[str, ledger.SyncResult]  # rule id (or freshness key) -> ledger changes
    sources: list[SourceAge] = field(default_factory=list)
    next_due: datetime | None = None
    digests_queued: int = 0  # status digests (alerts.digests)

    @property
    def queued(self) -> int:
        return sum(sum(r.queued.values()) for r in self.results.values()) + self.digests_queued


class Alerting:
    """The alerting of one configuration against one warehouse."""

    def __init__(self, config: Config, engine: sa.Engine, settings: AlertSettings | None = None):
        self.config, self.engine = config, engine
        self.settings = settings or load_alert_settings(config)
        key = str(engine.url)
        if key not in _schema_ready:
            ledger.ensure_schema(engine)
            _schema_ready.add(key)

    # -- specs --------------------------------------------------------------------------------

    def rule_spec(self, rule: Rule) -> ledger.AlertSpec:
        s = self.settings
        cooldown = rule.cooldown
        assert cooldown is not None  # the settings give every rule the default cool-down
        return ledger.AlertSpec(
            rule.id,
            rule.scope,
            rule.title,
            rule.severity,
            rule.notify,
            cooldown,
            rule.escalate_to or (),
            rule.escalate_after,
            s.max_escalations,
            bool(rule.resolve_note),
            rule.risk,
        )

    def freshness_spec(self, age: SourceAge) -> ledger.AlertSpec:
        s, tz = self.settings, self.config.timezone
        return ledger.AlertSpec(
            FRESHNESS_RULE,
            "source",
            "数据源不新鲜",
            "warning",
            age.sla.owner,
            s.cooldown,
            s.escalate_to,
            s.escalate_after,
            s.max_escalations,
            s.resolve_note,
            resolved_text=lambda row: (age.source, freshness_recovered(age.source, age.sla.asset_key, age.newest, tz)),
        )

    def unreachable_spec(self) -> ledger.AlertSpec:
        s = self.settings
        return ledger.AlertSpec(
            UNREACHABLE_RULE,
            "source",
            "数据源无法连接",
            "critical",
            s.run_failures_to,
            s.cooldown,
            resolve_note=s.resolve_note,
            resolved_text=lambda row: (row["entity_key"], f"数据源 {row['entity_key']} 又能读取了。"),
        )

    def run_spec(self) -> ledger.AlertSpec:
        s = self.settings
        return ledger.AlertSpec(
            RUN_FAILURE_RULE,
            "run",
            "流水线运行失败",
            "critical",
            s.run_failures_to,
            s.cooldown,
            resolve_note=s.resolve_note,
            resolved_text=lambda row: (row["details"].get("job", row["entity_key"]), "后来的运行成功了。"),
        )

    # -- evaluation ---------------------------------------------------------------------------

    def published_batch(self, conn: sa.Connection | None = None) -> str | None:
        """The batch the published snapshot reflects: it changes whenever a publish ran."""
        q = sa.select(pipeline_state.c.value, pipeline_state.c.updated_at).where(
            pipeline_state.c.key == PUBLISHED_BATCH
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(q).first()
        return None if row is None else f"{row[0]}@{row[1]}"

    def evaluate(self, now: datetime) -> Evaluation:
        """Evaluate every rule and freshness SLA at `now`, update the ledger and queue what is due."""
        now = aware_utc(now)
        s, tz = self.settings, self.config.timezone
        with self.engine.connect() as conn:
            found = evaluate_rules(conn, s.rules, now, tz)
            ages = source_ages(conn, s.freshness, now)
        results: dict[str, ledger.SyncResult] = {}
        with self.engine.begin() as conn:
            for rule in s.rules:
                results[rule.id] = ledger.sync(
                    conn,
                    self.rule_spec(rule),
                    found[rule.id].rows,
                    now,
                    self._rule_render(rule, now),
                    s.route,
                    s.board_url,
                )
            for age in ages:
                key = age.sla.asset_key
                rows = pd.DataFrame(
                    [{"entity_key": key, "order_no": None, "source": age.source, "newest": age.newest}]
                    if age.stale
                    else [],
                    columns=["entity_key", "order_no", "source", "newest"],
                )
                results[f"{FRESHNESS_RULE}:{age.source}"] = ledger.sync(
                    conn,
                    self.freshness_spec(age),
                    rows,
                    now,
                    self._freshness_render(age, now),
                    s.route,
                    s.board_url,
                    scope_keys=[key],
                )
            digests = queue_digests(conn, s, s.board_url, now, tz)
        dues = [r.next_due for r in results.values() if r.next_due] + [t for t in [digests.next_due] if t]
        return Evaluation(
            now,
            {r: b.count for r, b in found.items()},
            results,
            ages,
            min(dues) if dues else None,
            digests_queued=digests.queued,
        )

    def queue_ready_at(self, now: datetime) -> datetime | None:
        """When a queued message can next go out (now, a retry time or an expiring claim); None: queue empty."""
        with self.engine.connect() as conn:
            return queue.next_ready_at(conn, now)

    def _rule_render(self, rule: Rule, now: datetime):
        tz, board = self.config.timezone, self.settings.board_url

        def render(row: dict, kind: str, first_seen: Any) -> tuple[str, MessageText]:
            summary = rule_summary(rule, row, now, tz)
            return summary, rule_message(rule, row, summary, now, tz, board, kind, first_seen)

        return render

    def _freshness_render(self, age: SourceAge, now: datetime):
        def render(row: dict, kind: str, first_seen: Any) -> tuple[str, MessageText]:
            return freshness_message(
                age.source, age.sla.asset_key, age.newest, age.sla.max_age, now, self.config.timezone, kind
            )

        return render

    # -- run failures -------------------------------------------------------------------------

    def run_failed(self, entity: str, job: str, run_id: str, error: str, now: datetime) -> ledger.SyncResult:
        """A failed run: one open alert per job (or asset selection), re-sent after the cool-down."""
        now = aware_utc(now)
        summary, msg = run_failure_message(job, run_id, error)
        rows = pd.DataFrame([{"entity_key": entity, "order_no": None, "job": job, "run_id": run_id}])
        with self.engine.begin() as conn:
            return ledger.sync(
                conn,
                self.run_spec(),
                rows,
                now,
                lambda row, kind, fs: (summary, msg),
                self.settings.route,
                self.settings.board_url,
                scope_keys=[entity],
            )

    def run_succeeded(
        self, job: str, asset_keys: list[str] | None, now: datetime, source: str | None = None
    ) -> ledger.SyncResult:
        """A later successful run resolves the failure alerts it covers: the same job (and source), or
        for asset runs every failure whose assets it materialized again."""
        done, entity = set(asset_keys or ()), run_entity(job, asset_keys, source)
        with self.engine.connect() as conn:
            open_keys = ledger.open_alerts(conn, [RUN_FAILURE_RULE])["entity_key"].tolist()
        covered = [
            k
            for k in open_keys
            if k in (job, entity) or (k.startswith(ASSETS_PREFIX) and set(k[len(ASSETS_PREFIX) :].split(",")) <= done)
        ]
        empty = pd.DataFrame(columns=["entity_key", "order_no"])
        with self.engine.begin() as conn:
            return ledger.sync(
                conn,
                self.run_spec(),
                empty,
                aware_utc(now),
                _no_message,
                self.settings.route,
                self.settings.board_url,
                scope_keys=covered,
            )

    # -- sources the pipeline cannot read -------------------------------------------------------

    def sources_unreachable(self, failing: dict[str, tuple[datetime, str]], now: datetime) -> ledger.SyncResult:
        """The watched sources the source sensor cannot read (source -> (since when, the error)), all
        of them: one open alert per source, re-sent after the cool-down, resolved once it reads again."""
        now = aware_utc(now)
        rows = pd.DataFrame(
            [
                {"entity_key": src, "order_no": None, "since": since, "error": err}
                for src, (since, err) in failing.items()
            ],
            columns=["entity_key", "order_no", "since", "error"],
        )
        tz = self.config.timezone

        def render(row: dict, kind: str, first_seen: Any) -> tuple[str, MessageText]:
            return unreachable_message(row["entity_key"], row["since"], row["error"], now, tz, kind)

        with self.engine.begin() as conn:
            return ledger.sync(
                conn, self.unreachable_spec(), rows, now, render, self.settings.route, self.settings.board_url
            )

    # -- reading ------------------------------------------------------------------------------

    def open_alerts(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return ledger.open_alerts(conn)


def run_entity(job_name: str, asset_keys: list[str] | None, source: str | None = None) -> str:
    """The ledger key of a run: its job, with the source for a source's change run (each source's
    runs fail and recover on their own), or for ad-hoc asset runs the assets it was to materialize."""
    if source:
        return f"{job_name}:{source}"
    if asset_keys and job_name.startswith("__"):
        return ASSETS_PREFIX + ",".join(sorted(asset_keys))
    return job_name


def run_label(job_name: str, asset_keys: list[str] | None, source: str | None = None) -> str:
    """How an alert names a run: its job (and source), or an ad-hoc run's first asset and how many."""
    if source:
        return f"{job_name}（{source}）"
    if asset_keys and job_name.startswith("__"):
        keys = sorted(asset_keys)
        return keys[0] + (f" 等{len(keys)}个资产" if len(keys) > 1 else "")
    return job_name
