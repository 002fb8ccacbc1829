"""What the asset modules share: run config, resource keys, metadata helpers."""

from __future__ import annotations

import dagster as dg
import pandas as pd

WAREHOUSE = "warehouse"
CLOCK = "clock"
KUAIDI100 = "kuaidi100"
SOURCES_GROUP = "sources"
ORDERS_GROUP = "orders"
PUBLISHED_GROUP = "published"


def source_resource_key(entity: str) -> str:
    return f"source_{entity}"


def raw_asset_key(entity: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{entity}")


class LoadConfig(dg.Config):
    """Launch with `full_refresh: true` to rebuild from scratch instead of from the last watermark."""

    full_refresh: bool = False


def preview(frame: pd.DataFrame, columns: list[str], rows: int = 10) -> dg.MetadataValue:
    shown = frame[[c for c in columns if c in frame.columns]].head(rows)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if not shown.empty else "_no rows_")
