"""Drivers: the sqlite3 path the warehouse uses against Arrow-native ADBC, on the 1M demo company.

    python -m venv /tmp/adbc && /tmp/adbc/bin/pip install pandas pyarrow adbc-driver-sqlite
    /tmp/adbc/bin/python benchmarks/bench_drivers.py [benchmarks/out/company-1000000/erp.db]

Not a project dependency: this measures what replacing the drivers would buy (README,
"Known limits"). For each ERP table: reading every row into pandas, and writing them all into a
fresh SQLite table, each way. Then what ADBC does with a column whose values are of mixed types,
which is what a bad source row looks like to SQLite.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

# adbc-driver-sqlite and pyarrow are installed in the benchmark's own venv only (see above), not the project's.
import adbc_driver_sqlite.dbapi as adbc_sqlite  # pyright: ignore[reportMissingImports]
import pandas as pd
import pyarrow as pa  # pyright: ignore[reportMissingImports]

SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "out" / "company-1000000" / "erp.db")


def timed(label: str, work):
    started = time.perf_counter()
    result = work()
    print(f"  {label:<52}{time.perf_counter() - started:6.2f} s", flush=True)
    return result


def read_sqlite3(table: str) -> pd.DataFrame:
    """As warehouse.frames.read_frame: fetchall, then one frame from the tuples."""
    with sqlite3.connect(SOURCE) as conn:
        cur = conn.execute(f'SELECT * FROM "{table}"')
        return pd.DataFrame.from_records(cur.fetchall(), columns=[d[0] for d in cur.description], coerce_float=True)


def read_adbc(table: str) -> pa.Table:
    with adbc_sqlite.connect(str(SOURCE)) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{table}"')
        return cur.fetch_arrow_table()


def python_strings(kind: pa.DataType):
    """Text as the warehouse's frames hold it now: pandas' str dtype on Python objects, not on Arrow."""
    return pd.StringDtype("python", na_value=float("nan")) if pa.types.is_string(kind) else None


def write_sqlite3(path: Path, frame: pd.DataFrame) -> None:
    """As warehouse.frames.insert_frame on SQLite: tuples of plain values built column by column, one executemany."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"CREATE TABLE t ({', '.join(f'c{i}' for i in range(frame.shape[1]))})")
        columns = [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in frame.columns]
        conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * frame.shape[1])})", list(zip(*columns, strict=True)))


def write_adbc(path: Path, frame: pd.DataFrame) -> None:
    with adbc_sqlite.connect(str(path)) as conn, conn.cursor() as cur:
        cur.adbc_ingest("t", pa.Table.from_pandas(frame, preserve_index=False), mode="create")
        conn.commit()


def mixed_types() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (amount)")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)] + [("12,50",)])
        try:
            with adbc_sqlite.connect(str(path)) as conn, conn.cursor() as cur:
                cur.execute("SELECT amount FROM t")
                return f"read {cur.fetch_arrow_table().num_rows} rows"
        except OSError as error:
            return f"fails: {error}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for table in ("T_SAL_ORDERENTRY", "T_SAL_ORDER"):
            print(f"{table}:")
            frame = timed("read, sqlite3 → pandas", lambda table=table: read_sqlite3(table))
            arrow = timed("read, ADBC → Arrow", lambda table=table: read_adbc(table))
            timed(
                "     Arrow → pandas, strings as Python objects",
                lambda arrow=arrow: arrow.to_pandas(types_mapper=python_strings),
            )
            timed(
                f"write {len(frame):,} rows, sqlite3 executemany",
                lambda table=table, frame=frame: write_sqlite3(Path(tmp) / f"a-{table}.db", frame),
            )
            timed(
                f"write {len(frame):,} rows, ADBC ingest from pandas",
                lambda table=table, frame=frame: write_adbc(Path(tmp) / f"b-{table}.db", frame),
            )
    print(f"a column of 5,000 integers and then one text, through ADBC: {mixed_types()}")


if __name__ == "__main__":
    main()
