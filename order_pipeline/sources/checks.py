"""Can a configured source be read? The checks `order-pipeline check` and each source's run make.

Loading the code location never connects to a source: one unreachable ERP must not stop every
sensor and the UI. These checks say what is wrong in the config's own terms (file, entry, fix).
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import ConfigError, SourceConfig
from order_pipeline.sources.engines import source_engine


def newest_update(engine: sa.Engine, sc: SourceConfig) -> str | None:
    """The source's newest value of its watermark column, as text (None: the source is empty).

    What the source sensor asks each tick: one `SELECT MAX(...)`, an index lookup when the column
    is indexed, as the config asks."""
    entity = SOURCE_ENTITIES[sc.entity]
    assert entity.watermark is not None  # only a source with an updated-at column is watched
    column = engine.dialect.identifier_preparer.quote(sc.columns[entity.watermark])
    with engine.connect() as conn:
        value = conn.execute(sa.text(f"SELECT MAX({column}) FROM {sc.selectable()}")).scalar()
    return None if value is None else str(value)


def source_url(config_file: Path, sc: SourceConfig) -> str:
    """The source's URL; raises ConfigError when it comes from an environment variable that is not set."""
    entry = f"sources.{sc.entity}"
    if sc.url.env and sc.url.env not in os.environ:
        raise ConfigError(
            config_file,
            f"{entry}.url_env",
            f"environment variable {sc.url.env} is not set",
            f"export {sc.url.env}=... before starting",
        )
    url = sc.url.resolve()
    if not url:
        raise ConfigError(config_file, f"{entry}.url", "missing", "set `url:` or `url_env:`")
    try:
        sa.engine.make_url(url)
    except ArgumentError:
        # Not echoed: a URL from the environment may carry a password.
        raise ConfigError(
            config_file,
            f"{entry}.url_env",
            f"environment variable {sc.url.env} does not hold a database URL",
            "set it to e.g. postgresql+psycopg2://user:password@host/db",
        ) from None
    return url


def check_source(config_file: Path, sc: SourceConfig) -> list[str]:
    """The source's columns, after checking it can be reached and has every mapped column.

    Raises ConfigError naming the entry and the fix: an unset variable, a missing SQLite file, an
    unreachable server, an unknown table or query, a mapped column the source does not have.
    """
    entry = f"sources.{sc.entity}"
    url = source_url(config_file, sc)
    parsed = sa.engine.make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(file).exists():
        raise ConfigError(
            config_file,
            f"{entry}.url",
            f"database file {parsed.database} does not exist",
            "correct the path (relative paths are read from the config file's folder)",
        )
    try:
        with source_engine(url).connect() as conn:
            have = list(conn.execute(sa.text(f"SELECT * FROM {sc.selectable()} WHERE 1 = 0")).keys())
    except OperationalError as e:
        raise ConfigError(
            config_file,
            f"{entry}.url",
            f"cannot reach the database or read {sc.table or 'the query'} ({first_line(e)})",
            "check the URL, that the server is up, and the table name or query",
        ) from None
    except SQLAlchemyError as e:
        raise ConfigError(
            config_file, entry, f"the source cannot be read ({first_line(e)})", "check the table name or the query"
        ) from None
    for canon, column in sc.columns.items():
        if column not in have:
            raise ConfigError(
                config_file,
                f"{entry}.columns.{canon}",
                f"the source has no column {column!r}",
                f"map {canon} to one of: {', '.join(sorted(have))}",
            )
    return have


def first_line(e: Exception) -> str:
    """The driver's own message, first line: what went wrong without SQLAlchemy's wrapping."""
    return str(getattr(e, "orig", e)).strip().splitlines()[0]
