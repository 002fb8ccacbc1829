"""CSV export of a filtered order list, written batch by batch."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime

from order_pipeline.domain.times import iso_local

BOM = "\ufeff"  # so that spreadsheet programs read the UTF-8 (Chinese) text correctly
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value, tz: str):
    """A value as written to the file: local ISO times, and text that a spreadsheet would run as a formula defused."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso_local(value, tz)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_chunks(header: Sequence[str], batches: Iterable[Sequence[Sequence]], tz: str) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    buf.write(BOM)
    writer.writerow(header)
    for batch in batches:
        for row in batch:
            writer.writerow([csv_cell(v, tz) for v in row])
        yield buf.getvalue().encode("utf-8")
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue().encode("utf-8")
