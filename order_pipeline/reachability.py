"""`order-pipeline check`: can each system the config names be reached, and if not, why.

Loading the code location contacts nothing, so this is where an unreachable ERP, an unset
secret or a wrong table shows up before a run does: each source, the warehouse, the carrier
endpoint and each alert channel, as ok or failing with the reason and the fix.
"""

from __future__ import annotations

import ipaddress
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
from order_pipeline.notify.channels.config import VENDOR_ENDPOINTS
from order_pipeline.notify.settings import load_notify_settings
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
    if config.carrier.callback_url is not None:
        yield _attempt("carrier callback", lambda: _callback(config))
    yield from _channels(config)
    yield from _customer_channels(config)


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


def _callback(config: Config) -> str:
    """Whether Kuaidi100 can push to `carrier.callback_url`: a public http(s) address of the receiver."""
    carrier, url = config.carrier, config.carrier.callback_url or ""
    sandboxed = carrier.endpoint.startswith(SANDBOX_SCHEME)
    if not sandboxed and not _secret(config, carrier.push_salt, "carrier.push_salt_env"):
        raise ConfigError(
            config.path,
            "carrier.push_salt_env",
            "missing: without a salt pushes are unsigned and the receiver refuses them",
            "set `push_salt_env:` to a variable holding a random string",
        )
    parts = urlsplit(url)
    host = parts.hostname or ""
    problem = None if sandboxed else callback_host_problem(host, _addresses(host))
    if problem:
        raise ConfigError(
            config.path,
            "carrier.callback_url",
            f"{url} {problem}: Kuaidi100 cannot push to it",
            "give the public address a proxy forwards to `order-pipeline serve` (README: Receiving pushes)",
        )
    notes = []
    if parts.scheme == "https":
        notes.append("https: Kuaidi100 pushes plain http unless it enabled https for the account")
    if not parts.path.rstrip("/").endswith("/hooks/kuaidi100"):
        notes.append("the receiver is served at /hooks/kuaidi100: make sure the proxy maps this path to it")
    where = "the loopback stand-in pushes here" if sandboxed else "public"
    return "; ".join([f"{url} ({where})", *notes])


def callback_host_problem(host: str, addresses: list[str]) -> str | None:
    """Why Kuaidi100's servers could not reach `host` (resolving to `addresses`), or None when it looks public."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith((".localhost", ".local", ".internal", ".lan", ".home.arpa")):
        return "names a local host"
    try:
        literal = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if literal is None and "." not in name:
        return "is a single-label name, which only resolves inside this network"
    if literal is not None:
        addresses = [name]
    if not addresses:
        return "does not resolve"
    private = [a for a in addresses if not ipaddress.ip_address(a).is_global]
    if len(private) == len(addresses):
        return f"resolves only to private address {private[0]}" if literal is None else "is a private address"
    return None


def _addresses(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


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


def _customer_channels(config: Config) -> Iterator[Reach]:
    try:
        settings = load_notify_settings(config)
    except ConfigError as e:
        yield Reach("customer channels", False, str(e))
        return
    for name, spec in settings.channels.items():
        yield _attempt(f"customer channel {name}", lambda name=name, spec=spec: _customer_channel(config, name, spec))


def _customer_channel(config: Config, name: str, spec: dict) -> str:
    """The channel's secrets are set and its vendor accepts connections; nothing is sent."""
    for setting, env in spec.items():
        if setting.endswith("_env") and not os.environ.get(env):
            raise ConfigError(
                config.path,
                f"notifications.channels.{name}.{setting}",
                f"environment variable {env} is not set",
                f"export {env}=... before starting",
            )
    endpoint = spec.get("endpoint") or spec.get("api") or VENDOR_ENDPOINTS.get(spec["type"])
    if endpoint is None:
        return "writes to the warehouse (table customer_outbox)"
    url = urlsplit(str(endpoint))
    return _connect(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
