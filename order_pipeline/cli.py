"""`order-pipeline`: build the demo company, run the pipeline, open the UI, serve the pages."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import cast

import click
import pandas as pd

from order_pipeline.cli_notify import notify, print_customer_messages
from order_pipeline.cli_options import checked_config, config_option, local_time, now_option, pinned_now
from order_pipeline.contract.config import CONFIG_ENV, Config, ConfigError
from order_pipeline.demo.company import DEMO_KEY, DEMO_KEY_ENV, MIN_DAYS, MIN_ORDERS


def _step(name: str, seconds: float) -> None:
    click.echo(f"  ✓ {name:<28} {seconds:6.1f} s")


@contextmanager
def _holding_warehouse(config: Config, wait: float) -> Iterator[None]:
    """The warehouse's run lock for a run and the dispatch after it: one at a time per warehouse."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from order_pipeline.warehouse.engine import WarehouseUnreachable
    from order_pipeline.warehouse.lock import RunLocked, run_lock

    url = config.warehouse_url.resolve() or ""
    with ExitStack() as held:
        try:
            held.enter_context(run_lock(url, wait, on_wait=lambda msg: click.echo(f"  … {msg}")))
        except RunLocked as e:
            raise click.ClickException(str(e)) from None
        except (OperationalError, InterfaceError) as e:
            raise click.ClickException(str(WarehouseUnreachable(url, config.warehouse_entry, e))) from None
        yield


def _run(config: Config, now: datetime | None, full_refresh: bool) -> None:
    from order_pipeline.runner import dagster_instance, run_pipeline

    click.echo("Running the pipeline: extract each source, poll the carrier, unify, publish …")
    outcome = run_pipeline(
        config, dagster_instance(config), now=now.isoformat() if now else None, full_refresh=full_refresh, on_step=_step
    )
    if not outcome.success:
        raise click.ClickException("the run failed:\n  " + "\n  ".join(outcome.failures))
    click.echo(f"  run {outcome.run_id} succeeded")


def _dispatch(config: Config, now: datetime, *, show: int = 5) -> None:
    """Evaluate every rule and freshness SLA, send what is due, and print it grouped by recipient."""
    from resources.alerting import CLI_RETRIES, AlertingResource
    from resources.warehouse import WarehouseResource

    warehouse = WarehouseResource(url=config.warehouse_url.resolve() or "")
    alerting, dispatcher = AlertingResource(warehouse=warehouse, retries=CLI_RETRIES).runtime(config)
    ev = alerting.evaluate(now)
    drained = dispatcher.drain(now)
    click.echo("")
    click.echo(f"告警 alerts at {local_time(now, config)}:")
    for rule in alerting.settings.rules:
        click.echo(f"  {rule.id:<26}{ev.breaching.get(rule.id, 0):>6} now  {rule.title}")
    stale = [
        f"{a.source} (newest {local_time(a.newest, config) if a.newest else 'never'})" for a in ev.sources if a.stale
    ]
    click.echo(f"  {'source_freshness':<26}{len(stale):>6} stale{': ' + ', '.join(stale) if stale else ''}")
    click.echo(
        f"  queued {ev.queued} messages, delivered {drained.delivered}, failed {drained.failed}, "
        f"waiting for a rate limit {drained.waiting}"
    )
    groups: dict[tuple[str, str], list] = {}
    for sent in drained.sent:
        groups.setdefault((sent.targets, sent.channel), []).append(sent)
    for (targets, channel), items in groups.items():
        ok = sum(s.alerts for s in items if s.ok)
        click.echo(
            f"  → {targets or channel} via {channel}: {ok} sent"
            + (f", {sum(s.alerts for s in items if not s.ok)} failed" if ok < sum(s.alerts for s in items) else "")
        )
        for s in items[:show]:
            click.echo(f"      {'✓' if s.ok else '✗'} {s.title}" + (f"  ({s.error})" if s.error else ""))
        if len(items) > show:
            click.echo(f"      … and {len(items) - show} more")
    if any(s.channel == "outbox" for s in drained.sent):
        click.echo("  (outbox: what would have been sent is in table alert_outbox and the log)")


def _summary(config: Config) -> None:
    from order_pipeline.pipeline.summary import summarize
    from order_pipeline.warehouse.engine import Warehouse

    click.echo("")
    click.echo(summarize(Warehouse(config.warehouse_url.resolve() or "").engine))


@click.group()
def main() -> None:
    """order-pipeline: one order lifecycle view across ERP, finance, WMS and carrier."""


@main.command()
@click.option("--dir", "target", default="data/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--orders", default=5000, show_default=True, type=click.IntRange(min=MIN_ORDERS))
@click.option("--days", default=30, show_default=True, type=click.IntRange(min=MIN_DAYS))
@click.option("--seed", default=7, show_default=True)
@now_option
def demo(target: str, orders: int, days: int, seed: int, now: str | None) -> None:
    """Build the demo company, run the pipeline once and print what it found."""
    from order_pipeline.demo.company import build_demo_company

    pinned = pinned_now(now)
    target_path = Path(target).resolve()
    click.echo(
        f"Building the demo company in {target_path}: {orders} orders over {days} days, now = {pinned.isoformat()}"
    )
    started = time.perf_counter()
    company = build_demo_company(
        target_path, orders=orders, days=days, now=pinned, seed=seed, progress=lambda msg: click.echo(f"  … {msg}")
    )
    click.echo(f"  ✓ sources written in {time.perf_counter() - started:.1f} s")
    config = checked_config(str(company.config_path))
    with _holding_warehouse(config, wait=0):
        _run(config, pinned, full_refresh=True)
        _sandbox_pushes(config, pinned)
        _summary(config)
        _dispatch(config, pinned)
        print_customer_messages(config, pinned)
    click.echo(_demo_next_steps(config, pinned))


def _sandbox_pushes(config: Config, now: datetime) -> None:
    """The stand-in pushes its subscribed waybills' news, handed to the push receiver in-process (no server runs)."""
    from order_pipeline.carrier.receiver import in_process_deliver
    from order_pipeline.carrier.sandbox import push_updates
    from order_pipeline.warehouse.engine import Warehouse
    from resources.carrier import SANDBOX_SCHEME

    carrier = config.carrier
    if not carrier.endpoint.startswith(SANDBOX_SCHEME) or not carrier.callback_url:
        return
    engine = Warehouse(config.warehouse_url.resolve() or "").engine
    deliver = in_process_deliver(engine, carrier.push_salt.resolve() or "", lambda: now)
    pushed = push_updates(Path(carrier.endpoint.removeprefix(SANDBOX_SCHEME)), now, deliver)
    engine.dispose()
    stored = sum(p.delivered for p in pushed)
    click.echo(f"Kuaidi100 stand-in: {len(pushed)} pushes to {carrier.callback_url}, {stored} stored by the receiver")


def _demo_next_steps(config: Config, pinned: datetime) -> str:
    """Where the demo's results are and the commands to look at them, all at the demo's time."""
    path = config.path
    return f"""
Tables: {config.warehouse_url.resolve()}
  order_tracking_snapshot, order_tracking_parcels, order_tracking_events, pipeline_rejects,
  order_alerts (ledger), alert_deliveries, alert_outbox, customer_notifications (ledger), customer_outbox
Open alerts:           order-pipeline alerts --config {path} --now {local_time(pinned, config)}
Config: {path}
Open the Dagster UI:   order-pipeline ui --config {path}
Run again (incremental): order-pipeline run --config {path} --now {local_time(pinned, config)}"""


@main.command()
@config_option
@now_option
@click.option("--full-refresh", is_flag=True, help="Rebuild everything instead of the orders that changed.")
@click.option(
    "--wait",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for a run already writing to the warehouse; without it this run is skipped.",
)
def run(config_path: str | None, now: str | None, full_refresh: bool, wait: float) -> None:
    """Run the pipeline once (incremental by default), then evaluate every rule and freshness check and send
    the alerts."""
    config = checked_config(config_path)
    pinned = pinned_now(now)
    with _holding_warehouse(config, wait):
        _run(config, pinned if now else None, full_refresh)
        _summary(config)
        _dispatch(config, pinned)
        print_customer_messages(config, pinned)


@main.command()
@config_option
@now_option
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@click.option("--rule", "rule_ids", multiple=True, help="Only this rule (repeatable).")
def alerts(config_path: str | None, now: str | None, show_all: bool, rule_ids: tuple[str, ...]) -> None:
    """List the open alerts of the ledger (order_alerts)."""
    import sqlalchemy as sa

    from order_pipeline.alerts.ledger import ensure_schema
    from order_pipeline.alerts.messages import short_time as local_time
    from order_pipeline.contract.schema import order_alerts
    from order_pipeline.domain.times import waited_text
    from order_pipeline.warehouse.engine import Warehouse
    from order_pipeline.warehouse.frames import read_frame

    config = checked_config(config_path)
    engine = Warehouse(config.warehouse_url.resolve() or "").engine
    ensure_schema(engine)
    a = order_alerts
    q = sa.select(a)
    if not show_all:
        q = q.where(a.c.resolved_at.is_(None))
    if rule_ids:
        q = q.where(a.c.rule_id.in_(rule_ids))
    with engine.connect() as conn:
        rows = read_frame(
            conn,
            q.order_by(a.c.rule_id, a.c.first_seen, a.c.entity_key),
            ["first_seen", "last_seen", "notified_at", "resolved_at"],
        )
    if rows.empty:
        click.echo("No open alerts." if not show_all else "The ledger is empty.")
        return
    at, tz = pinned_now(now), config.timezone
    click.echo(
        f"{len(rows)} {'alerts' if show_all else 'open alerts'} ({config.warehouse_url.resolve()}, table order_alerts)"
    )
    for rule_id, group in rows.groupby("rule_id", sort=False):
        click.echo(f"\n{rule_id} ({len(group)})")
        # pandas-stubs type a row's fields as any scalar, Period and Interval included, which pd.notna's
        # overloads leave out; the time columns hold Timestamps (read_frame parses them).
        for r in group.itertuples(index=False):
            state = (
                f"resolved {local_time(r.resolved_at, tz)}"
                if pd.notna(r.resolved_at)  # pyright: ignore[reportCallIssue, reportArgumentType]
                else f"open {waited_text(pd.Timestamp(at) - cast(pd.Timestamp, r.first_seen))}"
            )
            told = f"notified {local_time(r.notified_at, tz)}" if pd.notna(r.notified_at) else "not yet notified"  # pyright: ignore[reportCallIssue, reportArgumentType]
            level = f", escalated ×{r.escalation_level}" if r.escalation_level else ""
            risk = ", high risk" if r.risk == "high" else ""
            click.echo(f"  [{r.severity}] {r.entity_key}: {state}, {told}{level}{risk}, {r.attempts} attempt(s)")
            click.echo(f"      {r.message}")


@main.command()
@config_option
def check(config_path: str | None) -> None:
    """Check that each source, the warehouse, the carrier endpoint and each channel can be reached."""
    from order_pipeline.reachability import check_all

    config = checked_config(config_path)
    click.echo(f"Checking {config.path}")
    failing = 0
    for reach in check_all(config):
        failing += not reach.ok
        click.echo(f"  {'ok  ' if reach.ok else 'FAIL'}  {reach.part:<28} {reach.detail}")
    if config.sections.get("web") is not None:
        from order_pipeline.web.security.startup import startup_warnings

        for warning in startup_warnings(_web_settings(config)):
            click.echo(f"  WARN  {warning}")
    if failing:
        raise click.ClickException(f"{failing} part(s) cannot be reached")


@main.command()
@config_option
@click.option("--port", default=3000, show_default=True)
def ui(config_path: str | None, port: int) -> None:
    """Start `dagster dev` (webserver + daemon) on this config."""
    config = checked_config(config_path)
    os.environ[CONFIG_ENV] = str(config.path)
    from order_pipeline.runner import dagster_home

    home = dagster_home(config)
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    # This interpreter's own dagster, whether or not its environment's bin is on PATH.
    args = [sys.executable, "-m", "dagster", "dev", "-p", str(port)]
    args += ["-w", str(workspace)] if workspace.exists() else ["-m", "order_pipeline.definitions"]
    click.echo(f"DAGSTER_HOME={home}  {CONFIG_ENV}={config.path}\n$ {' '.join(args)}")
    try:
        os.execv(args[0], args)
    except OSError as e:
        raise click.ClickException(f"could not start dagster dev with {sys.executable}: {e.strerror}") from None


def _web_settings(config: Config):
    from order_pipeline.web.settings import WebSettings

    try:
        return WebSettings.from_config(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def serve(config_path: str | None, host: str, port: int) -> None:
    """Serve the customer tracking page and the ops board (reads the published tables)."""
    from order_pipeline.web.server import serve as serve_web

    config = checked_config(config_path)
    _web_settings(config)  # fail on a bad `web:` section before binding the port
    serve_web(config, host=host, port=port)


@main.command()
@config_option
@now_option
@click.argument("order_no")
def link(config_path: str | None, now: str | None, order_no: str) -> None:
    """Print a signed, expiring tracking link for ORDER_NO."""
    from order_pipeline.domain.links import customer_link

    config = checked_config(config_path)
    click.echo(customer_link(_web_settings(config), order_no, pinned_now(now)))


@main.command("hash-password")
@click.password_option()
def hash_password(password: str) -> None:
    """Print a scrypt hash for a staff user's `password_hash:` in the config."""
    from order_pipeline.domain.passwords import hash_password as make_hash

    click.echo(make_hash(password))


@main.command("carrier-sandbox")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False), help="The demo's carrier.db.")
@click.option("--port", default=8765, show_default=True)
def carrier_sandbox(db: str, port: int) -> None:
    """Serve the Kuaidi100 stand-in on loopback (POST /poll/query.do)."""
    import uvicorn

    from order_pipeline.carrier.sandbox import app
    from order_pipeline.demo.company import DEMO_CUSTOMER

    uvicorn.run(app(db, DEMO_CUSTOMER, os.environ.get(DEMO_KEY_ENV, DEMO_KEY)), host="127.0.0.1", port=port)


main.add_command(notify)

if __name__ == "__main__":
    sys.exit(main())
