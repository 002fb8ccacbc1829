"""Rebuilding tables: in place, or into fresh copies swapped in at commit (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def rebuilding(conn: sa.Connection, *tables: sa.Table) -> Iterator[None]:
    """Empty tables for a full rebuild inside the caller's transaction; readers keep the old rows until commit.

    On SQLite the secondary indexes are dropped while rows go in and built once after,
    which beats updating them row by row; WAL readers are not disturbed. PostgreSQL keeps
    them (DROP INDEX would lock readers out for the whole rebuild) and gets fresh
    statistics instead: planned on an empty table's, the next incremental run's
    IN (subquery) joins go quadratic long before autovacuum notices.
    """
    sqlite = conn.dialect.name == "sqlite"
    for table in tables:
        conn.execute(table.delete())
        if sqlite:
            for index in table.indexes:
                index.drop(conn)
    yield
    for table in tables:
        if sqlite:
            for index in table.indexes:
                index.create(conn)
        else:
            conn.exec_driver_sql(f"ANALYZE {table.name}")


@contextmanager
def replacing(conn: sa.Connection, *tables: sa.Table) -> Iterator[dict[sa.Table, sa.Table]]:
    """Rebuild tables from scratch inside the caller's transaction; yields the table to fill for each.

    SQLite fills the tables themselves, as `rebuilding` empties them. PostgreSQL fills a
    fresh table without indexes for each and swaps it in at the end: rows go in without
    index upkeep, each index is then built in one sort, and the old rows leave with the
    old table instead of staying behind as dead rows. Readers keep reading the old table
    until the swap, and wait only for the swap itself. A table that a view or foreign key
    depends on, or that another role owns, is rebuilt in place instead.
    """
    fresh = {}
    if conn.dialect.name == "postgresql":
        fresh = {t: _fresh_copy(t) for t in tables if _swappable(conn, t)}
        for table in fresh.values():
            table.create(conn)
    with rebuilding(conn, *(t for t in tables if t not in fresh)):
        yield {t: fresh.get(t, t) for t in tables}
    if fresh:
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")  # index sorts in memory
    for table, new in fresh.items():
        _swap_in(conn, table, new)


NEXT = "__next"  # suffix of a table (and its indexes) being rebuilt, until the swap


def _fresh_copy(table: sa.Table) -> sa.Table:
    return sa.Table(
        table.name + NEXT, sa.MetaData(), *(sa.Column(c.name, c.type, nullable=c.nullable) for c in table.columns)
    )


def _swappable(conn: sa.Connection, table: sa.Table) -> bool:
    """PostgreSQL: this role owns the table and nothing outside it depends on it (deptype 'n':
    a view's rule, another table's foreign key), so it may be dropped."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT pg_get_userbyid(c.relowner) = current_user AND NOT EXISTS ("
                " SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid"
                " AND d.deptype = 'n') FROM pg_class c WHERE c.oid = to_regclass(:name)"
            ),
            {"name": table.name},
        ).scalar()
    )


def _swap_in(conn: sa.Connection, table: sa.Table, new: sa.Table) -> None:
    """Index the filled copy, give it the old table's grants, then drop the old table and take its names."""
    quote = conn.dialect.identifier_preparer.quote
    key = [c.name for c in table.primary_key.columns]
    if key:
        conn.exec_driver_sql(f"ALTER TABLE {new.name} ADD CONSTRAINT {new.name}_pkey PRIMARY KEY ({', '.join(key)})")
    for index in table.indexes:
        sa.Index(f"{index.name}{NEXT}", *(new.c[c.name] for c in index.columns), unique=index.unique).create(conn)
    grants = conn.execute(
        sa.text(  # grantee 0 is PUBLIC
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type"
            " FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(:name) AND a.grantee <> c.relowner"
        ),
        {"name": table.name},
    ).all()
    for grantee, privilege in grants:
        conn.exec_driver_sql(f"GRANT {privilege} ON {new.name} TO {grantee if grantee == 'PUBLIC' else quote(grantee)}")
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {new.name} RENAME TO {table.name}")
    if key:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME CONSTRAINT {new.name}_pkey TO {table.name}_pkey")
    for index in table.indexes:
        conn.exec_driver_sql(f"ALTER INDEX {index.name}{NEXT} RENAME TO {index.name}")
    conn.exec_driver_sql(f"ANALYZE {table.name}")
