"""Load and validate the YAML configuration.

Every mistake a user can make in the file fails here, at load time, with a
message that names the file, the entry and the fix. Secrets are never in the
file: an entry names the environment variable that holds them (`url_env`,
`key_env`, ...), and resources read them through Dagster's `EnvVar`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import yaml
from sqlalchemy.exc import NoSuchModuleError

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.parsing import ConfigError, SectionParser
from order_pipeline.contract.tracking_page import TrackingPageConfig, parse_tracking_page

CONFIG_ENV = "ORDER_PIPELINE_CONFIG"
DEFAULT_CONFIG = "order_pipeline.yaml"
DEMO_CONFIG = Path("data", "demo", DEFAULT_CONFIG)  # where `make demo` writes its config


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the installed driver is psycopg2."""
    return (
        "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith(("postgresql://", "postgres://")) else url
    )


@dataclass(frozen=True)
class Secret:
    """A value given either inline (non-secret) or by the name of an environment variable."""

    value: str | None = None
    env: str | None = None

    def resolve(self) -> str | None:
        return os.environ.get(self.env) if self.env else self.value


@dataclass(frozen=True)
class SourceConfig:
    entity: str
    url: Secret
    table: str | None
    query: str | None
    columns: dict[str, str]  # canonical name -> the source's own column name
    timezone: str

    def selectable(self) -> str:
        """The FROM clause: a table name or the configured SELECT as a subquery."""
        if self.query:
            return f"({self.query}) AS src"
        assert self.table is not None  # a source has exactly one of table and query
        return self.table


@dataclass(frozen=True)
class CarrierConfig:
    endpoint: str = "https://poll.kuaidi100.com/poll/query.do"
    customer: Secret = Secret()
    key: Secret = Secret()
    push_salt: Secret = Secret()  # signs subscription pushes: sent with each subscription, checked on each push
    callback_url: str | None = None  # where Kuaidi100 pushes a subscribed waybill's news: .../hooks/kuaidi100
    poll_interval: timedelta = timedelta(hours=2)
    # A subscribed waybill no push came for this long is polled after all (the SLA table's 2 h).
    push_silence: timedelta = timedelta(hours=2)
    max_polls_per_run: int = 500
    timeout: timedelta = timedelta(seconds=10)
    retries: int = 3
    max_consecutive_failures: int = 5  # a run stops polling after these; 0: never
    transit_days: int = 3  # ETA when the carrier gives none: shipped_at + this


@dataclass(frozen=True)
class Config:
    path: Path
    timezone: str
    data_dir: Path
    warehouse_url: Secret
    sources: dict[str, SourceConfig]
    carrier: CarrierConfig
    reject_threshold: int = 100
    sections: dict[str, Any] = field(default_factory=dict)  # rules, channels, web: parsed by their modules
    # How often each source is compared whole with its raw table (pipeline/reconcile.py).
    reconcile_every: timedelta = timedelta(hours=1)
    # What the customer's tracking page shows (contract/tracking_page.py).
    tracking_page: TrackingPageConfig = field(default_factory=TrackingPageConfig)

    @property
    def warehouse_entry(self) -> str:
        """Where the warehouse's URL is set, for a message that asks to correct it."""
        env = self.warehouse_url.env
        return f"{self.path}: warehouse.url_env ({env})" if env else f"{self.path}: warehouse.url"


TOP_LEVEL = {
    "timezone",
    "data_dir",
    "warehouse",
    "sources",
    "carrier",
    "pipeline",
    "freshness",
    "rules",
    "channels",
    "alerts",
    "web",
    "tracking_page",
    "notifications",
}


def find_config(explicit: str | Path | None = None) -> tuple[Path, bool]:
    """The config to use, and whether it is the demo's for want of another.

    An explicit path, else $ORDER_PIPELINE_CONFIG, else ./order_pipeline.yaml; in a project root
    with none of those but a demo built by `make demo`, the demo's config, so that `dagster dev`
    and `dagster definitions validate` work there without setting anything.
    """
    chosen = explicit or os.environ.get(CONFIG_ENV)
    if chosen:
        return Path(chosen).resolve(), False
    if Path(DEFAULT_CONFIG).exists() or not DEMO_CONFIG.exists():
        return Path(DEFAULT_CONFIG).resolve(), False
    return DEMO_CONFIG.resolve(), True


def config_path(explicit: str | Path | None = None) -> Path:
    return find_config(explicit)[0]


def load_config(path: str | Path | None = None) -> Config:
    path = config_path(path)
    if not path.exists():
        raise ConfigError(
            path,
            "(file)",
            "the configuration file does not exist",
            f"create it (see README, 'Configuration'), run `order-pipeline demo` to generate one, "
            f"or point ${CONFIG_ENV} / --config at the right file",
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            path, "(file)", f"not valid YAML ({e})", "correct the YAML syntax at the position shown"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(
            path,
            "(file)",
            "the top level must be a mapping",
            "start the file with keys such as `warehouse:` and `sources:`",
        )
    return _Parser(path, doc).parse()


class _Parser(SectionParser):
    def __init__(self, path: Path, doc: dict):
        super().__init__(path)
        self.doc = doc
        self.base = path.parent

    def callback_url(self, value) -> str | None:
        if value is None:
            return None
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(
                "carrier.callback_url",
                f"{value!r} is not an http(s) URL",
                "write the address Kuaidi100 can reach the push receiver at, "
                "e.g. http://track.example.com/hooks/kuaidi100",
            )
        return str(value)

    def positive_int(self, value, entry: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(entry, f"{value!r} is not a non-negative whole number", "write a number such as 500")
        return value

    def secret(self, d: dict, name: str, entry: str, required: bool) -> Secret:
        value, env = d.get(name), d.get(f"{name}_env")
        if value is not None and env is not None:
            self.fail(f"{entry}.{name}", f"both `{name}` and `{name}_env` are set", "keep one of them")
        if env is not None:
            # Only the name is checked here: the value is read where it is used (and by `check`).
            return Secret(env=self.env_name(env, f"{entry}.{name}_env", "ERP_DATABASE_URL"))
        if value is None and required:
            self.fail(
                f"{entry}.{name}", "missing", f"set `{name}:` or `{name}_env:` (the name of an environment variable)"
            )
        return Secret(value=None if value is None else str(value))

    def timezone(self, value, entry: str) -> str:
        try:
            ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(entry, f"unknown time zone {value!r}", "use an IANA name such as Asia/Shanghai or UTC")
        return str(value)

    def db_url(self, secret: Secret, entry: str) -> Secret:
        """Resolve relative SQLite paths against the config file's folder and check the URL parses.

        A URL from the environment is left to `order-pipeline check` and to the run that uses it.
        """
        if secret.env is not None:
            return secret
        url = secret.value
        assert url is not None  # a required secret without an environment name has a value
        try:
            parsed = sa.engine.make_url(url)
        except Exception:
            self.fail(
                entry,
                f"{url!r} is not a SQLAlchemy database URL",
                "write e.g. sqlite:///erp.db or postgresql+psycopg2://user@host/db",
            )
        try:
            # Loads the driver module, connects nowhere: a URL no installed driver reads fails here.
            sa.engine.make_url(driver_url(url)).get_dialect().import_dbapi()
        except (NoSuchModuleError, ImportError) as e:
            self.fail(
                entry,
                f"no installed database driver reads {parsed.drivername}:// URLs ({e})",
                "write e.g. sqlite:///erp.db or postgresql+psycopg2://user@host/db",
            )
        if parsed.password and secret.value is not None:
            self.fail(
                entry,
                "the URL carries a password, and secrets must not be in the file",
                f"export the URL in an environment variable and write `{entry.split('.')[-1]}_env: NAME`",
            )
        if parsed.drivername.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
            db = Path(parsed.database)
            if not db.is_absolute():
                db = (self.base / db).resolve()
                if secret.value is not None:
                    return Secret(value=str(parsed.set(database=str(db))))
        return secret

    def parse(self) -> Config:
        doc = self.mapping(self.doc, "", TOP_LEVEL)
        tz = self.timezone(doc.get("timezone", "Asia/Shanghai"), "timezone")
        data_dir = (self.base / str(doc.get("data_dir", "data"))).resolve()

        wh = self.mapping(doc.get("warehouse"), "warehouse", {"url", "url_env"})
        if not wh:
            wh = {"url": f"sqlite:///{data_dir / 'warehouse.db'}"}
        warehouse_url = self.db_url(self.secret(wh, "url", "warehouse", required=True), "warehouse.url")

        sources = self.sources(doc.get("sources"), tz)
        carrier = self.carrier(doc.get("carrier"))
        pipe = self.mapping(doc.get("pipeline"), "pipeline", {"reject_threshold", "reconcile_every"})
        threshold = self.positive_int(pipe.get("reject_threshold", 100), "pipeline.reject_threshold")
        reconcile_every = self.duration(pipe.get("reconcile_every", "1h"), "pipeline.reconcile_every")
        sections = {k: doc[k] for k in ("freshness", "rules", "channels", "alerts", "web", "notifications") if k in doc}
        return Config(
            self.path,
            tz,
            data_dir,
            warehouse_url,
            sources,
            carrier,
            threshold,
            sections,
            reconcile_every=reconcile_every,
            tracking_page=parse_tracking_page(self, doc.get("tracking_page")),
        )

    def sources(self, value, tz: str) -> dict[str, SourceConfig]:
        value = self.mapping(value, "sources", set(SOURCE_ENTITIES))
        missing = [n for n, e in SOURCE_ENTITIES.items() if not e.optional and n not in value]
        if missing:
            self.fail(
                f"sources.{missing[0]}",
                "required source is not configured",
                f"add `{missing[0]}:` under `sources:` with url, table (or query) and columns",
            )
        return {name: self.source(name, spec, tz) for name, spec in value.items()}

    def source(self, name: str, spec, tz: str) -> SourceConfig:
        entry = f"sources.{name}"
        spec = self.mapping(spec, entry, {"url", "url_env", "table", "query", "columns", "timezone"})
        url = self.db_url(self.secret(spec, "url", entry, required=True), f"{entry}.url")
        table, query = spec.get("table"), spec.get("query")
        if bool(table) == bool(query):
            self.fail(
                entry,
                "needs exactly one of `table` and `query`",
                "name the source table (`table: T_SAL_ORDER`) or give a SELECT (`query: SELECT ...`)",
            )
        if table and not re.fullmatch(r"[\w.\"]+", str(table)):
            self.fail(
                f"{entry}.table",
                f"{table!r} is not a table name",
                "give a plain table name, or use `query:` for anything else",
            )
        entity = SOURCE_ENTITIES[name]
        columns = self.mapping(spec.get("columns"), f"{entry}.columns", set(entity.column_names))
        absent = [c for c in entity.required_columns if c not in columns]
        if absent:
            self.fail(
                f"{entry}.columns.{absent[0]}",
                "required column is not mapped",
                f"add `{absent[0]}: <the source's column name>` under {entry}.columns",
            )
        for canon, src in columns.items():
            if not isinstance(src, str) or not src:
                self.fail(
                    f"{entry}.columns.{canon}",
                    f"{src!r} is not a column name",
                    "write the source's column name as text",
                )
        src_tz = self.timezone(spec.get("timezone", tz), f"{entry}.timezone")
        return SourceConfig(name, url, table and str(table), query and str(query), dict(columns), src_tz)

    def carrier(self, value) -> CarrierConfig:
        allowed = {
            "endpoint",
            "customer",
            "customer_env",
            "key",
            "key_env",
            "push_salt",
            "push_salt_env",
            "callback_url",
            "poll_interval",
            "push_silence",
            "max_polls_per_run",
            "timeout",
            "retries",
            "max_consecutive_failures",
            "transit_days",
        }
        c = self.mapping(value, "carrier", allowed)
        for name, env in (("key", "KUAIDI100_KEY"), ("push_salt", "KUAIDI100_SALT")):
            if name in c:
                self.fail(
                    f"carrier.{name}",
                    f"the Kuaidi100 {name.replace('_', ' ')} is a secret and must not be in the file",
                    f"remove it and set `{name}_env: {env}` (the variable that holds it)",
                )
        d = CarrierConfig()
        return CarrierConfig(
            endpoint=str(c.get("endpoint", d.endpoint)),
            customer=self.secret(c, "customer", "carrier", required=False),
            key=self.secret(c, "key", "carrier", required=False),
            push_salt=self.secret(c, "push_salt", "carrier", required=False),
            callback_url=self.callback_url(c.get("callback_url")),
            poll_interval=self.duration(c.get("poll_interval", "2h"), "carrier.poll_interval"),
            push_silence=self.duration(c.get("push_silence", "2h"), "carrier.push_silence"),
            max_polls_per_run=self.positive_int(
                c.get("max_polls_per_run", d.max_polls_per_run), "carrier.max_polls_per_run"
            ),
            timeout=self.duration(c.get("timeout", "10s"), "carrier.timeout"),
            retries=self.positive_int(c.get("retries", d.retries), "carrier.retries"),
            max_consecutive_failures=self.positive_int(
                c.get("max_consecutive_failures", d.max_consecutive_failures), "carrier.max_consecutive_failures"
            ),
            transit_days=self.positive_int(c.get("transit_days", d.transit_days), "carrier.transit_days"),
        )
