"""The alert ledger as an asset: the rules evaluated and what is due sent, right after a publish.

A change's run ends with this, so its alert goes out within the run instead of waiting for the
alert sensor's next tick. The sensor (`alert_dispatch`) still evaluates on its own cadence: a
rule that becomes true with time (paid two hours ago), a cool-down, an escalation, a retry. Both
go through the ledger, so an alert is sent once whichever sees it first.
"""

import dagster as dg

from assets.published import SNAPSHOT
from order_pipeline.alerts.dispatch import DrainResult
from order_pipeline.alerts.evaluation import Evaluation
from order_pipeline.contract.config import Config
from resources.alerting import AlertingResource
from resources.warehouse import PipelineClock

ORDER_ALERTS = dg.AssetKey("order_alerts")
ALERTS_GROUP = "alerts"


def evaluation_metadata(ev: Evaluation, drained: DrainResult) -> dict[str, int]:
    """What an evaluation found, queued and sent, as numbers the UI plots: per rule, per channel, in all."""
    meta = {f"breaching_{rule}": n for rule, n in sorted(ev.breaching.items())}
    meta |= {f"queued_{rule}": sum(r.queued.values()) for rule, r in sorted(ev.results.items()) if ":" not in rule}
    for sent in drained.sent:
        key = f"{'delivered' if sent.ok else 'failed'}_{sent.channel}"
        meta[key] = meta.get(key, 0) + sent.alerts
    meta |= {
        "stale_sources": sum(a.stale for a in ev.sources),
        "queued": ev.queued,
        "delivered": drained.delivered,
        "failed": drained.failed,
        "waiting": drained.waiting,
    }
    return meta


def order_alerts_asset(config: Config) -> dg.AssetsDefinition:
    @dg.asset(
        key=ORDER_ALERTS,
        deps=[SNAPSHOT],
        group_name=ALERTS_GROUP,
        kinds={"python"},
        description="The SLA rules and source freshness evaluated on the published snapshot, and the alerts "
        "that are due sent (ledger: order_alerts, attempts: alert_deliveries).",
    )
    def order_alerts(alerting: AlertingResource, clock: PipelineClock) -> dg.MaterializeResult:
        alerts, dispatcher = alerting.runtime(config)
        now = clock.now()
        ev = alerts.evaluate(now)
        drained = dispatcher.drain(now)
        return dg.MaterializeResult(metadata=evaluation_metadata(ev, drained))

    return order_alerts
