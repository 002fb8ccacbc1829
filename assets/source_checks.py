"""`source_reachable`: can the pipeline read each watched source?

The source sensor reads every watched source each tick, so it reports this check itself (as a
runless evaluation) when a source stops or starts answering, and with each "checked, unchanged"
record: a source the pipeline cannot read turns its raw asset red at once, while the raw asset's
freshness says how long ago the pipeline last loaded or reconciled it. Run from the UI, the check
asks the source the sensor's question.
"""

from collections.abc import Sequence

import dagster as dg

from assets.common import raw_asset_key
from order_pipeline.contract.config import SourceConfig
from order_pipeline.sources.checks import first_line, newest_update
from resources.warehouse import SourceDatabases

SOURCE_REACHABLE = "source_reachable"
DESCRIPTION = (
    "The source answers the sensor's question (its newest updated_at). Reported by the source_changes "
    "sensor when a source stops or starts answering, and every few minutes while it answers."
)


def reachable_check_key(entity: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(raw_asset_key(entity), SOURCE_REACHABLE)


def reachable(entity: str, newest: str | None, tz: str) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=raw_asset_key(entity),
        check_name=SOURCE_REACHABLE,
        passed=True,
        metadata={"newest_source_update": newest or "(no rows)", "source_timezone": tz},
    )


def unreachable(entity: str, error: Exception) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=raw_asset_key(entity),
        check_name=SOURCE_REACHABLE,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"error": first_line(error)},
    )


def source_reachable_checks(watched: Sequence[SourceConfig]) -> list[dg.AssetChecksDefinition]:
    if not watched:
        return []
    by_key = {reachable_check_key(sc.entity): sc for sc in watched}

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(SOURCE_REACHABLE, asset=key.asset_key, description=DESCRIPTION) for key in by_key],
        name="source_reachable",
        can_subset=True,
    )
    def _checks(context: dg.AssetCheckExecutionContext, sources: SourceDatabases):
        for key in context.selected_asset_check_keys:
            sc = by_key[key]
            try:
                newest = newest_update(sources.engine(sc.entity), sc)
            except Exception as e:  # the check's answer, not a crash: which source, and why
                yield _result(unreachable(sc.entity, e))
                continue
            yield _result(reachable(sc.entity, newest, sc.timezone))

    return [_checks]


def _result(evaluation: dg.AssetCheckEvaluation) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        metadata=evaluation.metadata,
    )
