"""Row validation against the source contract: typed good rows, and rejects with reasons.

Pure functions over DataFrames. A row that breaks the contract is never dropped
silently: it comes back in the rejects frame with its key, every reason, and the
row as the source sent it (under the source's own column names).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from order_pipeline.contract.canonical import Column, Entity

REJECT_COLUMNS = ["record_key", "reason", "raw_row"]

# Set in a frame's attrs by a reader that had to decode text leniently: bytes that were not
# UTF-8 came through as lone surrogates (U+DC80..U+DCFF), which only such a frame can hold.
LENIENT_TEXT = "lenient_text"
_UNDECODED = "[\udc80-\udcff]"


def parse_timestamps(values: pd.Series, tz: str) -> pd.Series:
    """Source timestamps -> UTC. Naive values are local times in the source's zone."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.where(values.notna(), None).astype(object)
        try:
            parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        except (ValueError, TypeError):
            # A column mixing naive and offset-carrying values: one at a time.
            parsed = pd.Series([_one_timestamp(v, tz) for v in text], index=values.index, dtype="datetime64[us, UTC]")
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
    return parsed.dt.tz_convert("UTC")


def _one_timestamp(value, tz: str):
    ts = pd.to_datetime(value, errors="coerce")
    if ts is pd.NaT or ts is None:
        return pd.NaT
    return ts.tz_localize(tz) if ts.tzinfo is None else ts


class _Reasons:
    """Why each row breaks the contract; a row may collect several reasons, joined by '; '."""

    def __init__(self, index: pd.Index):
        self.text = pd.Series("", index=index, dtype=object)

    def flag(self, mask: pd.Series, reason: str | pd.Series) -> None:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            self.text = self.text.where(~mask, self.text + np.where(self.text.eq(""), "", "; ") + reason)

    @property
    def clean(self) -> pd.Series:
        return self.text.eq("")


def validate(
    entity: Entity, frame: pd.DataFrame, tz: str, source_names: dict[str, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a mapped source frame (canonical column names) into (good typed rows, rejects)."""
    lenient = bool(frame.attrs.get(LENIENT_TEXT))
    frame = frame.reset_index(drop=True)
    out = pd.DataFrame(index=frame.index)
    reasons = _Reasons(frame.index)
    if lenient:
        _flag_undecoded(frame, reasons)
    for col in entity.columns:
        out[col.name] = _typed(col, frame[col.name], tz, reasons) if col.name in frame.columns else None

    key = list(entity.key)
    # Two versions of a row with different watermarks are an update history: the newest wins.
    # Two different versions at the same watermark contradict each other: neither is trusted.
    version = key + ([entity.watermark] if entity.watermark else [])
    keyed = reasons.clean
    # Most loads repeat no key: one pass tells, and spares them the conflict search and the dedup.
    repeated = bool(out[keyed].duplicated(key, keep=False).any())
    if repeated and not entity.summed:
        conflicting = _conflicting_duplicates(out[keyed], version)
        reasons.flag(keyed & out.index.isin(conflicting), f"duplicate {'/'.join(key)} with conflicting values")

    bad = ~reasons.clean
    good = _one_row_per_key(out[~bad], entity, key, repeated)
    rejects = pd.DataFrame(
        {
            "record_key": _record_keys(frame[bad], out[bad], entity),
            "reason": reasons.text[bad],
            "raw_row": _raw_rows(frame[bad], source_names),
        },
        columns=REJECT_COLUMNS,
    ).reset_index(drop=True)
    return good, rejects


def _flag_undecoded(frame: pd.DataFrame, reasons: _Reasons) -> None:
    """Reject each row with a value holding bytes that were not UTF-8, showing them escaped.

    Only frames read leniently are searched, so valid loads pay nothing for it.
    """
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
            continue
        bad = values.str.contains(_UNDECODED, regex=True, na=False)
        if bad.any():
            shown = values[bad].map(escaped)
            reasons.flag(bad, (f"{name} is not valid UTF-8: " + shown).reindex(values.index, fill_value=""))


def escaped(text):
    """Text with the bytes a lenient decode could not read back as `\\xff` escapes; anything else as it is."""
    if text.__class__ is not str:
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _typed(col: Column, raw: pd.Series, tz: str, reasons: _Reasons) -> pd.Series:
    """One source column as its canonical type, flagging the values that break the contract."""
    typed = pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw)
    if col.kind != "str" and typed:  # numbers or times the driver already typed: nothing to strip
        text, present = None, raw.notna()
    else:
        text = _stripped(raw)
        present = text.notna()
    if col.kind == "str":
        assert text is not None  # a text column is always stripped above
        value = text
    elif col.kind in ("float", "int"):
        value = pd.to_numeric(raw.where(present, None), errors="coerce")
        reasons.flag(present & value.isna(), f"{col.name} is not a number")
        if col.non_negative:
            reasons.flag(value < 0, f"negative {col.name}")
    else:  # datetime, date
        value = parse_timestamps(raw.where(present, None), tz)
        reasons.flag(present & value.isna(), f"unparseable {col.name}")
        if col.kind == "date":
            value = value.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    if not col.nullable:
        reasons.flag(~present, f"missing {col.name}")
    if col.allowed:
        value = value.str.lower()
        reasons.flag(present & ~value.isin(col.allowed), f"unknown {col.name}")
    return value


def _one_row_per_key(good: pd.DataFrame, entity: Entity, key: list[str], repeated: bool) -> pd.DataFrame:
    """Summed entities add up their repeats (quantities); the others keep the newest version."""
    if entity.summed:
        rest = [c for c in good.columns if c not in key]
        good = good.groupby(key, sort=False, as_index=False, dropna=False).agg(
            {c: "sum" if c in entity.summed else "first" for c in rest}
        )
    elif repeated:
        if entity.watermark:
            good = good.sort_values(entity.watermark, kind="stable")
        good = good.drop_duplicates(subset=key, keep="last").sort_index()
    return good.reset_index(drop=True)


def _stripped(raw: pd.Series) -> pd.Series:
    """Each value as text without surrounding blanks; None where missing or blank ('' is no value).

    One Python pass over the values, strings first: pandas' string methods would convert,
    strip and compare in three passes, several times slower on the millions of values of a
    full load.
    """
    text = [(v.strip() or None) if v.__class__ is str else _other_text(v) for v in raw.to_numpy(dtype=object).tolist()]
    return pd.Series(text, index=raw.index, dtype=object)


def _other_text(v) -> str | None:
    """A value that is not a str (a number, a date, or missing), as `_stripped` gives it."""
    return None if _isna(v) else str(v).strip() or None


def _conflicting_duplicates(frame: pd.DataFrame, key: list[str]) -> pd.Index:
    """Index of rows sharing a key with another row that differs in any value."""
    dup = frame[frame.duplicated(key, keep=False)]
    if dup.empty:
        return dup.index
    distinct = dup.astype(str).drop_duplicates().groupby(key).size()
    conflicted = distinct[distinct > 1].index
    keys = pd.MultiIndex.from_frame(dup[key].astype(str)) if len(key) > 1 else dup[key[0]].astype(str)
    wanted = conflicted if len(key) > 1 else conflicted.astype(str)
    return dup.index[keys.isin(wanted)]


def record_keys(rows: pd.DataFrame, key) -> pd.Series:
    """The key of each row as one string, the way `pipeline_rejects.record_key` names it."""
    keys = rows[key[0]].astype(str)
    for part in key[1:]:
        keys = keys + "/" + rows[part].astype(str)
    return keys


def keyless_names(raw: pd.DataFrame, entity: Entity) -> pd.Series:
    """The names of rows that came without their key: `row:` and a stable hash of what else they carried.

    Neither the key columns nor the modification time go into the hash, so the row once fixed (its
    key filled in, its time moved on) or touched again is known as the row that was rejected.
    """
    left_out = [c for c in (*entity.key, entity.watermark) if c and c in raw.columns]
    # map() gives object dtype; astype(str) again hashes valid text as the plain text it is.
    text = raw.drop(columns=left_out).astype(str).map(escaped).astype(str)
    return pd.util.hash_pandas_object(text, index=False).map(lambda h: f"row:{h:016x}")


def _record_keys(raw: pd.DataFrame, typed: pd.DataFrame, entity: Entity) -> pd.Series:
    key = list(entity.key)
    parts = typed[key].astype(object).where(typed[key].notna(), None)
    keys = (
        parts.apply(lambda r: "/".join("" if v is None else str(v) for v in r), axis=1)
        if len(parts)
        else pd.Series(dtype=object)
    )
    missing = parts.isna().all(axis=1) if len(parts) else pd.Series(dtype=bool)
    if missing.any():
        keys[missing] = keyless_names(raw[missing], entity)
    return keys.map(escaped) if len(keys) else keys


def _raw_rows(raw: pd.DataFrame, source_names: dict[str, str] | None) -> pd.Series:
    names = source_names or {}
    renamed = raw.rename(columns=names)
    return pd.Series(
        [
            json.dumps({k: _raw_text(v) for k, v in row.items()}, ensure_ascii=False, sort_keys=True)
            for row in renamed.to_dict("records")
        ],
        index=raw.index,
        dtype=object,
    )


def _raw_text(v) -> str | None:
    """A raw value as the reject shows it; bytes that were not UTF-8 as `\\xff` escapes."""
    return None if _isna(v) else escaped(str(v))


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
