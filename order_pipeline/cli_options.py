"""What every `order-pipeline` command shares: the --config and --now options, and loading the config."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click

from order_pipeline.contract.config import CONFIG_ENV, Config, ConfigError, load_config
from order_pipeline.demo.company import use_demo_secrets
from order_pipeline.domain.times import parse_instant

config_option = click.option(
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    type=click.Path(dir_okay=False),
    help=f"Config file (default: ${CONFIG_ENV} or ./order_pipeline.yaml).",
)
now_option = click.option("--now", help="Pin the clock (ISO time; naive means Asia/Shanghai) for a reproducible run.")


def pinned_now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        return parse_instant(value, "Asia/Shanghai")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time; write e.g. 2026-11-25T10:00:00+08:00") from None


def local_time(at: datetime, config: Config) -> str:
    """A time as the business reads it: in the config's zone."""
    return at.astimezone(ZoneInfo(config.timezone)).isoformat()


def checked_config(path: str | None) -> Config:
    from order_pipeline.definitions import alert_settings
    from order_pipeline.notify.links import link_settings
    from order_pipeline.notify.settings import load_notify_settings

    # The demo config names this variable for the sandbox's key; a real config names its own.
    use_demo_secrets()
    try:
        config = load_config(path)
        # The sections other modules read, checked now: a mistake is one message, not a traceback later.
        alert_settings(config)
        if config.sections.get("web") is not None:
            link_settings(config)
        load_notify_settings(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    return config
