"""What the asset modules share: groups, run config, metadata helpers.

Resources reach the assets as typed parameters named by their keys in the Definitions
(`warehouse`, `clock`, `sources`, `kuaidi100`).
"""

from __future__ import annotations

import math
from datetime import date, datetime

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError

from order_pipeline.contract.config import driver_url
from order_pipeline.contract.schema import raw_table_name

SOURCES_GROUP = "sources"
ORDERS_GROUP = "orders"
PUBLISHED_GROUP = "published"
ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
TABLE_NAME = "dagster/table_name"
# The data team runs the pipeline and answers its alerts; each raw asset is tagged with the system it reads.
OWNERS = ["team:data"]
# The kind of what lives in the warehouse, until the definitions know its URL (see `described`).
WAREHOUSE_KIND = "sql"


def raw_asset_key(entity: str) -> dg.AssetKey:
    return dg.AssetKey(raw_table_name(entity))


class LoadConfig(dg.Config):
    """Launch with `full_refresh: true` to rebuild from scratch instead of from the last watermark."""

    full_refresh: bool = False


def table_preview(frame: pd.DataFrame, columns: list[str] | None = None, rows: int = 10) -> dg.MetadataValue:
    """The first rows of `frame` as a table the UI renders (and keeps typed), not as Markdown."""
    shown = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    shown = shown.head(rows)
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), _column_type(shown[c])) for c in shown.columns])
    records = [dg.TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in shown.to_dict("records")]
    return dg.MetadataValue.table(records, schema)


def described(spec: dg.AssetSpec, storage: str) -> dg.AssetSpec:
    """An asset spec with its owners, and the warehouse's own kind (sqlite, postgresql) for WAREHOUSE_KIND."""
    kinds = {storage if kind == WAREHOUSE_KIND else kind for kind in spec.kinds}
    return spec.replace_attributes(kinds=kinds, owners=OWNERS)


def storage_kind(url: str | None) -> str:
    """The kind the UI shows for tables in the database at `url`: sqlite, postgresql, mysql …"""
    if not url:
        return "sql"  # a URL read from the environment at run time
    try:
        return sa.make_url(driver_url(url)).get_backend_name()
    except ArgumentError:
        return "sql"


def table_metadata(table: sa.Table) -> dict[str, object]:
    """A warehouse table's name and column schema (types, nullability, descriptions), for its asset."""
    single_key = len(table.primary_key.columns) == 1
    columns = [
        dg.TableColumn(
            c.name,
            _sql_type(c.type),
            description=c.comment,
            constraints=dg.TableColumnConstraints(nullable=bool(c.nullable), unique=bool(c.primary_key) and single_key),
        )
        for c in table.columns
    ]
    return {COLUMN_SCHEMA: dg.MetadataValue.table_schema(dg.TableSchema(columns=columns)), TABLE_NAME: table.name}


def _sql_type(sql_type: sa.types.TypeEngine) -> str:
    return {
        sa.DateTime: "timestamp",
        sa.Date: "date",
        sa.Boolean: "boolean",
        sa.Float: "float",
        sa.BigInteger: "bigint",
        sa.Integer: "integer",
    }.get(type(sql_type), "text")


def _column_type(col: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(col):
        return "bool"
    if pd.api.types.is_integer_dtype(col):
        return "int"
    if pd.api.types.is_float_dtype(col):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(col):
        return "datetime"
    return "string"


def _cell(value) -> str | int | float | bool | None:
    """A value as a table record holds it: plain types only, times as ISO text, no NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
