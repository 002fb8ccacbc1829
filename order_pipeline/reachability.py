"""`order-pipeline check`: can each system the config names be reached, and if not, why.

Loading the code location contacts nothing, so this is where an unreachable ERP, an unset
secret or a wrong table shows up before a run does: each source, the warehouse, the carrier
endpoint and each alert channel, as ok or failing with the reason and the fix.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from order_pipeline.alerts.channels.config import build_channel
from order_pipeline.alerts.settings import load_alert_settings
from order_pipeline.contract.config import Config, ConfigError, Secret, driver_url
from order_pipeline.sources.checks import check_source, first_line
from resources.carrier import SANDBOX_SCHEME

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Reach:
    part: str  # "source orders", "warehouse", "carrier", "channel wecom_ops"
    ok: bool
    detail: str


def check_all(config: Config) -> Iterator[Reach]:
    """Every part, in the order a run needs them; each failure is reported, none stops the others."""
    for name, sc in config.sources.items():
        yield _attempt(f"source {name}", lambda sc=sc: f"{len(check_source(config.path, sc))} columns readable")
    yield _attempt("warehouse", lambda: _warehouse(config))
    yield _attempt("carrier", lambda: _carrier(config))
    yield from _channels(config)


def _attempt(part: str, probe: Callable[[], str]) -> Reach:
    try:
        return Reach(part, True, probe())
    except ConfigError as e:
        return Reach(part, False, str(e))
    except (OSError, SQLAlchemyError) as e:
        return Reach(part, False, first_line(e))


def _secret(config: Config, secret: Secret, entry: str) -> str | None:
    if secret.env and secret.env not in os.environ:
        raise ConfigError(
            config.path,
            entry,
            f"environment variable {secret.env} is not set",
            f"export {secret.env}=... before starting",
        )
    return secret.resolve()


def _warehouse(config: Config) -> str:
    url = driver_url(_secret(config, config.warehouse_url, "warehouse.url_env") or "")
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return f"{parsed.database} does not exist yet: the first run creates it"
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5} if parsed.get_backend_name() != "sqlite" else {})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
    return f"{parsed.get_backend_name()} answers"


def _carrier(config: Config) -> str:
    carrier = config.carrier
    if carrier.endpoint.startswith(SANDBOX_SCHEME):
        db = Path(carrier.endpoint.removeprefix(SANDBOX_SCHEME))
        if not db.exists():
            raise ConfigError(
                config.path,
                "carrier.endpoint",
                f"the sandbox database {db} does not exist",
                "run `order-pipeline demo`, or point the endpoint at Kuaidi100",
            )
        return f"the loopback stand-in ({db})"
    for name, secret in (("customer", carrier.customer), ("key", carrier.key)):
        if not _secret(config, secret, f"carrier.{name}_env"):
            raise ConfigError(
                config.path, f"carrier.{name}_env", "missing", f"set `{name}_env:` to the variable that holds it"
            )
    parts = urlsplit(carrier.endpoint)
    return _connect(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def _channels(config: Config) -> Iterator[Reach]:
    try:
        settings = load_alert_settings(config)
    except ConfigError as e:
        yield Reach("channels", False, str(e))
        return
    for name, spec in settings.channel_specs.items():
        yield _attempt(f"channel {name}", lambda name=name, spec=spec: _channel(name, spec, settings.config_path))


def _channel(name: str, spec, config_file: Path) -> str:
    endpoint = build_channel(name, spec, None, config_file).endpoint()
    return "writes to the warehouse" if endpoint is None else _connect(*endpoint)


def _connect(host: str, port: int) -> str:
    """A TCP connection to the host, and nothing sent: a check must not post to a robot or mail anyone."""
    with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS):
        pass
    return f"{host}:{port} accepts connections"
