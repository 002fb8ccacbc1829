"""Declarative automation and freshness: the sensors that make the pipeline follow its sources."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dagster as dg

AUTOMATION_SENSOR = "follow_sources"
# Runs the raw assets' "ran recently" checks; the source-freshness alert is the alert sensor's.
FRESHNESS_SENSOR = "raw_asset_freshness_checks"


def automation_sensor(interval: int = 30) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the automation conditions (eager: `unified_orders` and the published tables)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="Runs unified_orders and the published tables after any raw source they read was updated.",
    )


def freshness_sensor(checks: Sequence[dg.AssetChecksDefinition], interval: int = 60) -> dg.SensorDefinition:
    """Evaluates the raw assets' last-update checks ("the asset ran recently", assets.checks.freshness_checks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.SupersessionWarning)  # see assets.checks.freshness_checks
        return dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            minimum_interval_seconds=interval,
            name=FRESHNESS_SENSOR,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
