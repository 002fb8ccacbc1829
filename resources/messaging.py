"""The customer-messaging resource: a config's notifier against the warehouse."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg

from order_pipeline.contract.config import Config
from order_pipeline.notify.runtime import build_notifier
from order_pipeline.notify.sender import Notifier
from resources.warehouse import WarehouseResource


class CustomerMessaging(dg.ConfigurableResource):
    """Plans and sends a config's customer messages (`notifications:`).

    The notifier is kept for the process, per config and warehouse: its channels hold their HTTP
    connections, and a WeChat channel its token, from one run to the next.
    """

    warehouse: WarehouseResource
    _notifiers: ClassVar[dict[tuple[str, str], Notifier | None]] = {}

    def notifier(self, config: Config) -> Notifier | None:
        """None when the config sends no customer messages."""
        key = (str(config.path), self.warehouse.url)
        if key not in self._notifiers:
            self._notifiers[key] = build_notifier(config, self.warehouse.engine)
        return self._notifiers[key]

    @classmethod
    def forget(cls) -> None:
        """Drop the kept notifiers (a test that changes a config under the same path)."""
        for notifier in cls._notifiers.values():
            if notifier is not None:
                notifier.close()
        cls._notifiers.clear()
