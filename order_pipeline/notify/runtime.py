"""A config's notifier: its settings, channels, links and phone key, built when a run needs them."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import sqlalchemy as sa

from order_pipeline.contract.config import Config
from order_pipeline.notify import ledger
from order_pipeline.notify.channels.config import build_customer_channel
from order_pipeline.notify.links import link_settings
from order_pipeline.notify.phones import phone_key
from order_pipeline.notify.render import Links
from order_pipeline.notify.sender import Notifier
from order_pipeline.notify.settings import load_notify_settings


def build_notifier(
    config: Config, engine: sa.Engine, transports: Mapping[str, httpx.BaseTransport] | None = None
) -> Notifier | None:
    """The notifier of `config` against `engine` (tables created when missing), or None when the
    config sends no customer messages. Reads the channels' secrets and the link secret: a missing
    one raises ConfigError naming its entry. `transports` route a channel's HTTP elsewhere (a
    test's stand-in), by channel name."""
    settings = load_notify_settings(config)
    ledger.ensure_schema(engine)
    if not settings.enabled:
        return None
    signing = link_settings(config)
    channels = {
        name: build_customer_channel(name, spec, engine, config.path, (transports or {}).get(name))
        for name, spec in settings.channels.items()
    }
    key = phone_key(settings.phone_hash_key_env, signing.link_secret, str(config.path))
    return Notifier(engine, settings, channels, Links(signing, settings.link_url), key)
