"""Declarative automation: the sensor that makes the pipeline follow its sources."""

from __future__ import annotations

import dagster as dg

AUTOMATION_SENSOR = "follow_sources"


def automation_sensor(interval: int = 30) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the automation conditions (eager: `unified_orders` and the published tables)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="Runs unified_orders and the published tables after any raw source they read was updated.",
    )
