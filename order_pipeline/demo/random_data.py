"""Building blocks of the demo's rows, each on a whole numpy array at once: random durations, mobile numbers,
string concatenation, and the way the sources write times and ids.

Times are local wall-clock seconds since 1970-01-01 (the sources store naive Shanghai times).
"""

from __future__ import annotations

import numpy as np

HOUR, DAY = 3_600, 86_400


def random_hours(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """n random durations from lo to hi hours, in whole seconds."""
    return rng.integers(round(lo * HOUR), round(hi * HOUR), n)


def mobile_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mainland mobile numbers, 1[3-9] and nine digits."""
    return (13_000_000_000 + rng.integers(0, 7_000_000_000, n)).astype(str)


def ranks_in_groups(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of np.repeat(x, counts)."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def concat_strings(*parts) -> np.ndarray:
    """Element-wise concatenation of strings and string arrays."""
    out = parts[0]
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return out


def timestamp_text(seconds: np.ndarray) -> np.ndarray:
    """Local wall-clock seconds -> 'YYYY-MM-DD HH:MM:SS', the way the sources store time."""
    text = np.datetime_as_string(np.asarray(seconds).astype("datetime64[s]"), unit="s").astype("U19")
    text.view(np.uint32).reshape(len(text), 19)[:, 10] = ord(" ")  # ISO's 'T'
    return text


def date_text(seconds: np.ndarray) -> np.ndarray:
    """Local wall-clock seconds -> 'YYYY-MM-DD'."""
    return np.datetime_as_string(np.asarray(seconds).astype("datetime64[s]"), unit="D")


def yyyymmdd(days: np.ndarray) -> np.ndarray:
    """datetime64[D] -> 20261125 as integers."""
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    return year * 10_000 + month * 100 + day


def daily_ids(prefix: str, seconds: np.ndarray) -> np.ndarray:
    """IDs like SO20261125000123: the local date, then a serial per day in time order."""
    order = np.argsort(seconds, kind="stable")
    day = seconds[order] // DAY
    serial = np.arange(len(day)) - np.searchsorted(day, day) + 1
    text = np.strings.add(prefix, (yyyymmdd(day.astype("datetime64[D]")) * 1_000_000 + serial).astype(str))
    ids = np.empty_like(text)
    ids[order] = text
    return ids
