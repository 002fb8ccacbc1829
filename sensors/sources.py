"""Source-change sensors: one per source, asking it only for its newest `updated_at`.

A tick runs one `SELECT MAX(<updated-at column>)` against the source (an index lookup when the
column is indexed, as the config asks). When the value moved past the cursor, the sensor asks
for a run of that raw asset, keyed by the new value, so a restarted daemon never launches the
same load twice. `unified_orders` and the published tables follow by declarative automation.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import sqlalchemy as sa

from assets.common import raw_asset_key
from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import SourceConfig
from resources.warehouse import SourceDatabases

INTERVAL_SECONDS = 30


def sensor_name(entity: str) -> str:
    return f"{entity}_source_changed"


def newest_update(engine: sa.Engine, sc: SourceConfig) -> str | None:
    """The source's newest value of its watermark column, as text (None: the source is empty)."""
    entity = SOURCE_ENTITIES[sc.entity]
    assert entity.watermark is not None  # only a source with an updated-at column is watched
    column = engine.dialect.identifier_preparer.quote(sc.columns[entity.watermark])
    with engine.connect() as conn:
        value = conn.execute(sa.text(f"SELECT MAX({column}) FROM {sc.selectable()}")).scalar()
    return None if value is None else str(value)


def source_change_sensor(
    sc: SourceConfig, followers: Sequence[str] = (), interval: int = INTERVAL_SECONDS
) -> dg.SensorDefinition:
    """The sensor for one source with a watermark; `followers` are sources re-read with it (order lines)."""
    entity = SOURCE_ENTITIES[sc.entity]
    if entity.watermark is None:
        raise ValueError(f"{sc.entity} has no updated-at column to watch; it follows its parent")
    keys = [raw_asset_key(sc.entity), *(raw_asset_key(f) for f in followers)]
    column = sc.columns[entity.watermark]

    @dg.sensor(
        name=sensor_name(sc.entity),
        target=keys,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Asks the {entity.system.upper()} for MAX({column}) of {sc.table or 'its query'} and loads "
            f"{', '.join(k.to_user_string() for k in keys)} when it moved."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, sources: SourceDatabases):
        newest = newest_update(sources.engine(sc.entity), sc)
        if newest is None:
            return dg.SkipReason(f"the {sc.entity} source has no rows yet")
        if newest == context.cursor:
            return dg.SkipReason(f"no new rows in {sc.entity} since {newest}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{sc.entity}:{newest}",
                    asset_selection=keys,
                    tags={"order_pipeline/source": sc.entity, "order_pipeline/watermark": newest},
                )
            ],
            cursor=newest,
        )

    return _sensor


def source_sensors(sources: dict[str, SourceConfig], interval: int = INTERVAL_SECONDS) -> list[dg.SensorDefinition]:
    """One sensor per source with a watermark; sources without one ride along with their parent."""
    out = []
    for name, sc in sources.items():
        if SOURCE_ENTITIES[name].watermark is None:
            continue
        followers = [f for f, e in SOURCE_ENTITIES.items() if e.watermark is None and f in sources and name == "orders"]
        out.append(source_change_sensor(sc, followers, interval))
    return out
