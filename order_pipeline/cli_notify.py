"""`order-pipeline notify …`: the customer messages' opt-outs and what the ledger holds."""

from __future__ import annotations

from datetime import datetime

import click

from order_pipeline.cli_options import checked_config, config_option, local_time, now_option, pinned_now
from order_pipeline.contract.config import Config

# How the summary names each status.
STATUS_WORDS = {
    "sent": "sent",
    "held": "held (quiet hours or the daily cap)",
    "pending": "waiting to retry",
    "failed": "failed",
    "invalid": "could not be sent (bad number, no template parameter fits)",
    "suppressed": "suppressed (opted out)",
    "superseded": "superseded (a later message, or cancelled)",
    "in_doubt": "in doubt (a crash between send and record)",
}


def _notifier(config: Config):
    from order_pipeline.notify.runtime import build_notifier
    from order_pipeline.warehouse.engine import Warehouse

    engine = Warehouse(config.warehouse_url.resolve() or "").engine
    notifier = build_notifier(config, engine)
    if notifier is None:
        raise click.ClickException(f"{config.path}: no `notifications:` section, so no customer is messaged")
    return notifier


def print_customer_messages(config: Config, now: datetime) -> None:
    """What the ledger holds, per event, channel and status, and when the next waiting message goes."""
    from order_pipeline.notify import ledger
    from order_pipeline.notify.settings import load_notify_settings
    from order_pipeline.warehouse.engine import Warehouse

    if not load_notify_settings(config).enabled:
        return
    engine = Warehouse(config.warehouse_url.resolve() or "").engine
    with engine.connect() as conn:
        if not ledger.exists(conn):
            return
        counts = ledger.status_counts(conn)
        due = ledger.next_due(conn)
    engine.dispose()
    click.echo(f"\nCustomer messages at {local_time(now, config)} (table customer_notifications):")
    if counts.empty:
        click.echo("  none yet")
    for (event, channel), group in counts.groupby(["event", "channel"], sort=True):
        parts = ", ".join(
            f"{n} {STATUS_WORDS.get(s, s)}" for s, n in zip(group["status"], group["messages"], strict=True)
        )
        click.echo(f"  {event:<17} {channel:<8} {parts}")
    if due is not None:
        click.echo(f"  next waiting message goes at {local_time(due, config)}")


@click.group()
def notify() -> None:
    """Customer messages: opt-outs and the ledger."""


@notify.command()
@config_option
@now_option
@click.argument("phone")
@click.option("--reason", help="Why, for the record (e.g. 'asked by phone, ticket 1234').")
def optout(config_path: str | None, now: str | None, phone: str, reason: str | None) -> None:
    """Never message PHONE again (the suppression list keeps its keyed hash, not the number)."""
    from order_pipeline.domain.masking import mask_phone
    from order_pipeline.notify.phones import suppress

    notifier = _notifier(checked_config(config_path))
    with notifier.engine.begin() as conn:
        added = suppress(conn, notifier.key, phone, "manual", reason, pinned_now(now))
    click.echo(f"{mask_phone(phone)} {'is now' if added else 'was already'} on the suppression list")


@notify.command()
@config_option
@click.argument("phone")
def optin(config_path: str | None, phone: str) -> None:
    """Take PHONE off the suppression list (the customer asked to hear again)."""
    from order_pipeline.domain.masking import mask_phone
    from order_pipeline.notify.phones import unsuppress

    notifier = _notifier(checked_config(config_path))
    with notifier.engine.begin() as conn:
        removed = unsuppress(conn, notifier.key, phone)
    click.echo(f"{mask_phone(phone)} {'is off' if removed else 'was not on'} the suppression list")


@notify.command()
@config_option
@now_option
def status(config_path: str | None, now: str | None) -> None:
    """Messages per event, channel and status, and when the next waiting one goes."""
    config = checked_config(config_path)
    _notifier(config)  # the tables exist, and the config sends messages at all
    print_customer_messages(config, pinned_now(now))
