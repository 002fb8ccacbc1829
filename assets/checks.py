"""Checks on the order assets: every SLA rule, and how recently each raw asset ran.

Each rule is an asset check on `unified_orders`, evaluated with the rule's own SQL against the
`unified_orders` table (same columns as the published snapshot), so the UI shows each breach
with its count and the first offending orders. A breach is a business problem, not bad data:
the checks warn, they do not block.

Freshness has one mechanism per audience, and they answer different questions:

- **the data engineers' view**: a `FreshnessPolicy` on each raw asset and on the published
  snapshot (`freshness_policies`): did the pipeline look? A watched source is loaded when it
  changes and reconciled every `pipeline.reconcile_every` when it does not; the carrier is polled
  every `carrier.poll_interval`; each of those runs publishes. So an asset not materialized
  within its cadence plus `LOOK_GRACE` means the sensor, the schedule or the runs stopped, and a
  quiet source stays green. (Dagster's policies count materializations only, so the sensor's
  "checked, unchanged" observations show in the history but cannot carry the status.)
- **the owner's alert**: the `source_freshness` alert (`order_pipeline.alerts.freshness`) from
  the `freshness:` SLAs, time since the newest `updated_at` loaded from the source (for the
  carrier, the newest Kuaidi100 answer while a parcel waits for one). This is what tells a
  source's owner: a source whose sync went silent is stale even while every run succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg
import pandas as pd

from assets.carrier import RAW_TRACKING
from assets.common import raw_asset_key, table_preview
from assets.published import SNAPSHOT
from assets.unified import UNIFIED_ORDERS
from order_pipeline.alerts.rules.model import Rule
from order_pipeline.alerts.rules.sql import count_and_sample
from order_pipeline.contract.schema import unified_orders
from order_pipeline.domain.times import waited_text
from resources.warehouse import PipelineClock, WarehouseResource

RULE_CHECK_PREFIX = "sla_"
# A reconcile or a poll of a big source takes a while; its run may wait in the queue behind another.
LOOK_GRACE = timedelta(minutes=15)
SAMPLE_ROWS = 20


def rule_check_name(rule_id: str) -> str:
    return f"{RULE_CHECK_PREFIX}{rule_id}"


def rule_checks(rules: Sequence[Rule], timezone: str, sample: int = SAMPLE_ROWS) -> list[dg.AssetChecksDefinition]:
    if not rules:
        return []
    by_name = {rule_check_name(r.id): r for r in rules}
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=UNIFIED_ORDERS,
            description=f"Business SLA, not data quality (warns while orders breach it): {r.title}: "
            f"{r.condition_text} → {', '.join(r.notify)}",
        )
        for name, r in by_name.items()
    ]

    @dg.multi_asset_check(
        specs=specs,
        name="sla_rules",
        can_subset=True,
        description="The SLA rules of the `rules:` section, evaluated on unified_orders.",
    )
    def sla_rules(context, warehouse: WarehouseResource, clock: PipelineClock):  # context: AssetCheckExecutionContext
        now = clock.now()
        with warehouse.engine.connect() as conn:
            for key in context.selected_asset_check_keys:
                rule = by_name[key.name]
                count, rows = count_and_sample(conn, rule, now, timezone, sample, orders=unified_orders)
                yield dg.AssetCheckResult(
                    check_name=key.name,
                    asset_key=UNIFIED_ORDERS,
                    passed=count == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "offending": count,
                        "rule": rule.id,
                        "scope": rule.scope,
                        "condition": rule.condition_text,
                        "notify": ", ".join(rule.notify),
                        "evaluated_at": dg.MetadataValue.timestamp(now),
                        "first_offending": table_preview(_offending(rule, rows, now), rows=sample),
                    },
                )

    return [sla_rules]


def _offending(rule: Rule, rows: pd.DataFrame, now) -> pd.DataFrame:
    """The first offending orders (or SKUs) as the check shows them."""
    if rule.scope == "sku":
        return rows[["sku", "available", "safety_stock", "pending_qty", "pending_orders", "suggested_qty"]]
    since = pd.to_datetime(rows[rule.waited_from or "waiting_since"], utc=True)
    shown = pd.DataFrame(
        {
            "order_no": rows["order_no"],
            "stage": rows["stage_label"],
            "waited": [waited_text(None if pd.isna(s) else pd.Timestamp(now) - s) for s in since],
            "owner": rows["responsible_role"],
        }
    )
    return shown


def freshness_policies(
    sources: Sequence[str], reconcile_every: timedelta, poll_interval: timedelta
) -> dict[dg.AssetKey, dg.FreshnessPolicy]:
    """Each raw asset's and the snapshot's cadence as a freshness policy (see the module doc)."""
    looked = dg.FreshnessPolicy.time_window(fail_window=reconcile_every + LOOK_GRACE)
    policies: dict[dg.AssetKey, dg.FreshnessPolicy] = {raw_asset_key(entity): looked for entity in sources}
    policies[RAW_TRACKING] = dg.FreshnessPolicy.time_window(fail_window=poll_interval + LOOK_GRACE)
    published = min(reconcile_every, poll_interval) if sources else poll_interval
    policies[SNAPSHOT] = dg.FreshnessPolicy.time_window(fail_window=published + LOOK_GRACE)
    return policies
