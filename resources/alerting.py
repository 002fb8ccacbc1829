"""The alerting resource: rule evaluation, the ledger and the channels, against the warehouse."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg

from order_pipeline.alerts.dispatch import Dispatcher, build_channels
from order_pipeline.alerts.evaluation import Alerting
from order_pipeline.contract.config import Config
from resources.warehouse import WarehouseResource

# Attempts per message beyond the first, within one drain. A sensor tick makes one attempt and
# leaves a failure to a later tick (the queue row's retry time, which the alert sensor's cursor
# wakes up for): sleeping between attempts would hold the tick, and a few unreachable channels
# could outlast Dagster's 60 s sensor timeout, leaving their claimed messages stuck for a cool-down.
TICK_RETRIES = 0
# `order-pipeline run` sends once and exits, with no later tick to retry for it: it retries a
# retryable failure within the drain, waiting 1 s, 2 s, 4 s.
CLI_RETRIES = 3


class AlertingResource(dg.ConfigurableResource):
    """Evaluates a config's rules and freshness SLAs and sends through its channels.

    The parsed alert settings and the channels are kept for the process, per config and
    warehouse: a sensor tick builds its resources afresh, and an idle tick should cost one query.
    """

    warehouse: WarehouseResource
    retries: int = TICK_RETRIES
    _runtimes: ClassVar[dict[tuple[str, str, int], tuple[Alerting, Dispatcher]]] = {}

    def runtime(self, config: Config) -> tuple[Alerting, Dispatcher]:
        key = (str(config.path), self.warehouse.url, self.retries)
        if key not in self._runtimes:
            engine = self.warehouse.engine
            alerting = Alerting(config, engine)
            channels = build_channels(alerting.settings, engine)
            self._runtimes[key] = (alerting, Dispatcher(engine, channels, retries=self.retries))
        return self._runtimes[key]

    @classmethod
    def forget(cls) -> None:
        """Drop the kept runtimes (a test that changes a config under the same path)."""
        cls._runtimes.clear()
