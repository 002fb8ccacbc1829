"""Fingerprints of rows, to find the few that differ between a source and the warehouse.

Rows are hashed on their typed, canonical values, so the source's validated rows and the
warehouse's stored ones hash alike when they are equal, whatever types the drivers handed back.
Keys fall into buckets; a bucket's digest is its row count and the sum of its row hashes.
Only the rows of buckets whose digests differ are compared one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from order_pipeline.contract.canonical import Entity

BUCKETS = 4096
_MISSING_TEXT = "\x00"  # no source text is a lone NUL: missing text hashes apart from any value
_MISSING_NUMBER = -1.0e308
_LOW = np.uint64(0xFFFFFFFF)
_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1's prime: multiplying by it mixes every bit upwards


def column_hashes(entity: Entity, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A uint64 hash per value of each of the entity's columns, of one representation per kind:
    times as UTC microseconds, numbers as float64, text as str, missing values as a marker of
    their own. Equal values hash alike whichever side (and driver) they came from."""
    out: dict[str, np.ndarray] = {}
    for col in entity.columns:
        values = frame[col.name] if col.name in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        if col.kind in ("datetime", "date"):
            times = pd.to_datetime(values, utc=True, format="ISO8601").dt.tz_convert(None).dt.floor("us")
            canon = times.to_numpy(dtype="datetime64[us]").view("i8")
        elif col.kind in ("float", "int"):
            numbers = pd.to_numeric(values, errors="coerce").astype("float64") + 0.0  # -0.0 is 0.0
            canon = numbers.fillna(_MISSING_NUMBER).to_numpy()
        else:
            canon = values.to_numpy(dtype=object, copy=True)
            canon[pd.isna(canon)] = _MISSING_TEXT
        # Hashed value by value, not factorized first: most columns are nearly unique.
        out[col.name] = pd.util.hash_array(canon, categorize=False)
    return out


@dataclass(frozen=True)
class Fingerprints:
    """Per row: its key's bucket and the hash of its content."""

    bucket: np.ndarray
    row_hash: np.ndarray

    @classmethod
    def of(cls, entity: Entity, frame: pd.DataFrame, buckets: int = BUCKETS) -> Fingerprints:
        hashes = column_hashes(entity, frame)
        key = _combined(hashes[k] for k in entity.key)
        rows = _combined(hashes[c.name] for c in entity.columns)
        return cls((key % np.uint64(buckets)).astype(np.int64), rows)

    def digest(self) -> pd.DataFrame:
        """Per bucket: rows, and the sums of the hashes' low and high halves (no overflow below 2^32 rows)."""
        frame = pd.DataFrame({"bucket": self.bucket, "lo": self.row_hash & _LOW, "hi": self.row_hash >> np.uint64(32)})
        return frame.groupby("bucket").agg(rows=("lo", "size"), lo=("lo", "sum"), hi=("hi", "sum"))


def _combined(hashes) -> np.ndarray:
    """One hash of several, order-sensitive (a value moved to another column changes it)."""
    out = None
    for h in hashes:
        out = h.copy() if out is None else out * _MULTIPLIER ^ h
    assert out is not None  # an entity has columns, and a key
    return out


def differing_buckets(source: Fingerprints, stored: Fingerprints) -> np.ndarray:
    """The buckets whose rows differ: in count, or in content."""
    a, b = source.digest(), stored.digest()
    both = a.merge(b, left_index=True, right_index=True, how="outer", suffixes=("_src", "_wh")).fillna(-1)
    differ = (
        (both["rows_src"] != both["rows_wh"]) | (both["lo_src"] != both["lo_wh"]) | (both["hi_src"] != both["hi_wh"])
    )
    return both.index[differ].to_numpy()


@dataclass(frozen=True)
class Differences:
    changed: pd.Index  # index of source rows missing from, or different in, the warehouse
    only_stored: pd.DataFrame  # keys of stored rows the source does not have
    buckets: int  # buckets that differed


def differences(entity: Entity, source: pd.DataFrame, stored: pd.DataFrame, buckets: int = BUCKETS) -> Differences:
    """Which rows of `source` (validated) and `stored` (the raw table) differ, found bucket by bucket."""
    key = list(entity.key)
    src, wh = Fingerprints.of(entity, source, buckets), Fingerprints.of(entity, stored, buckets)
    suspect = differing_buckets(src, wh)
    in_src, in_wh = np.isin(src.bucket, suspect), np.isin(wh.bucket, suspect)
    a = source.loc[in_src, key].astype(str).assign(_hash=src.row_hash[in_src], _row=source.index[in_src])
    b = stored.loc[in_wh, key].astype(str).assign(_hash=wh.row_hash[in_wh])
    merged = a.merge(b, on=key, how="outer", suffixes=("", "_wh"), indicator=True)
    changed = merged[
        (merged["_merge"] == "left_only") | ((merged["_merge"] == "both") & (merged["_hash"] != merged["_hash_wh"]))
    ]
    only_stored = merged.loc[merged["_merge"] == "right_only", key].reset_index(drop=True)
    return Differences(pd.Index(changed["_row"].astype(np.int64)), only_stored, len(suspect))
