"""Checks on the order assets: every SLA rule, and how recently each raw asset ran.

Each rule is an asset check on `unified_orders`, evaluated with the rule's own SQL against the
`unified_orders` table (same columns as the published snapshot), so the UI shows each breach
with its count and the first offending orders. A breach is a business problem, not bad data:
the checks warn, they do not block.

Freshness means two things here, both from the same `freshness:` SLAs:

- **the asset ran recently** (these checks, `freshness_check` on each raw asset, and the
  freshness policies): time since the raw asset was last materialized, whatever the run found,
  so a run that loaded no new rows counts. They show in the UI and send no message.
- **the source produced data recently** (the `source_freshness` alert,
  `order_pipeline.source_freshness`): time since the newest `updated_at` loaded from the source
  (for the carrier, the newest Kuaidi100 answer while a parcel waits for one). This is what
  alerts a source's owner: a source whose sync went silent is stale even while every run succeeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dagster as dg
import pandas as pd

from assets.carrier import RAW_TRACKING
from assets.common import CLOCK, WAREHOUSE
from assets.unified import UNIFIED_ORDERS
from order_pipeline.alerts.messages import waited_text
from order_pipeline.alerts.rules.model import Rule
from order_pipeline.alerts.rules.sql import count_and_sample
from order_pipeline.alerts.settings import SourceSla
from order_pipeline.contract.schema import unified_orders

RULE_CHECK_PREFIX = "sla_"
SAMPLE_ROWS = 20


def rule_check_name(rule_id: str) -> str:
    return f"{RULE_CHECK_PREFIX}{rule_id}"


def rule_checks(rules: Sequence[Rule], timezone: str, sample: int = SAMPLE_ROWS) -> list[dg.AssetChecksDefinition]:
    if not rules:
        return []
    by_name = {rule_check_name(r.id): r for r in rules}
    specs = [
        dg.AssetCheckSpec(
            name, asset=UNIFIED_ORDERS, description=f"{r.title}: {r.condition_text} → {', '.join(r.notify)}"
        )
        for name, r in by_name.items()
    ]

    @dg.multi_asset_check(
        specs=specs,
        name="sla_rules",
        can_subset=True,
        required_resource_keys={WAREHOUSE, CLOCK},
        description="The SLA rules of the `rules:` section, evaluated on unified_orders.",
    )
    def sla_rules(context):
        now = context.resources.clock.now()
        with context.resources.warehouse.engine.connect() as conn:
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
                        "first_offending": dg.MetadataValue.md(_table(rule, rows, now)),
                    },
                )

    return [sla_rules]


def _table(rule: Rule, rows: pd.DataFrame, now) -> str:
    if rows.empty:
        return "_none_"
    if rule.scope == "sku":
        cols = ["sku", "available", "safety_stock", "pending_qty", "pending_orders", "suggested_qty"]
        return rows[cols].to_markdown(index=False)
    since = pd.to_datetime(rows[rule.waited_from or "waiting_since"], utc=True)
    shown = pd.DataFrame(
        {
            "order_no": rows["order_no"],
            "stage": rows["stage_label"],
            "waited": [waited_text(None if pd.isna(s) else pd.Timestamp(now) - s) for s in since],
            "owner": rows["responsible_role"],
        }
    )
    return shown.to_markdown(index=False)


def freshness_checks(
    slas: Sequence[SourceSla], timezone: str, assets: set[dg.AssetKey]
) -> list[dg.AssetChecksDefinition]:
    """ "The asset ran recently": a last-update check per raw asset, failing (warn) when it was not
    materialized within its source's SLA. Not the source-freshness alert (see the module doc)."""
    by_age: dict = {}
    for sla in slas:
        key = RAW_TRACKING if sla.source == "carrier" else dg.AssetKey(sla.asset_key)
        if key in assets:
            by_age.setdefault(sla.max_age, []).append(key)
    checks = []
    with warnings.catch_warnings():
        # Superseded by FreshnessPolicy (also set on the raw assets), but these checks are what a
        # sensor evaluates on a schedule, with a result per evaluation in the asset's check history.
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        for age, keys in by_age.items():
            checks += dg.build_last_update_freshness_checks(
                assets=keys, lower_bound_delta=age, timezone=timezone, severity=dg.AssetCheckSeverity.WARN
            )
    return list(checks)


def freshness_policies(slas: Sequence[SourceSla]) -> dict[dg.AssetKey, dg.FreshnessPolicy]:
    """The same SLAs as freshness policies ("the asset ran recently"), for the UI's freshness status
    of each raw asset."""
    return {
        RAW_TRACKING if s.source == "carrier" else dg.AssetKey(s.asset_key): dg.FreshnessPolicy.time_window(
            fail_window=s.max_age
        )
        for s in slas
    }
