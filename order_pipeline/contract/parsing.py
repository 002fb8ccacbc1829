"""The checks every section of the config shares: each failure names the file, the entry and the fix."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A mistake in the configuration file, phrased for the person who made it."""

    def __init__(self, file: str | Path, entry: str, problem: str, fix: str):
        self.file, self.entry, self.problem, self.fix = str(file), entry, problem, fix
        super().__init__(f"{file}: {entry}: {problem}. Fix: {fix}")


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: Any) -> timedelta:
    """'90s', '30m', '2h', '1d', '1w' -> timedelta. Raises ValueError otherwise."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


class SectionParser:
    """The checks every part of the config shares; each failure names the file, the entry and the fix.

    Entries are reported under `prefix` (e.g. "web" makes "web.link_ttl").
    """

    prefix = ""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, entry: str, problem: str, fix: str):
        raise ConfigError(self.path, ".".join(p for p in (self.prefix, entry) if p) or "(file)", problem, fix)

    def mapping(self, value, entry: str, allowed: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(
                entry,
                "must be a mapping",
                f"write `{entry.split('.')[-1] or 'key'}:` followed by indented `key: value` lines",
            )
        unknown = sorted(set(value) - allowed)
        if unknown:
            self.fail(
                f"{entry}.{unknown[0]}" if entry else unknown[0],
                "unknown setting",
                f"use one of: {', '.join(sorted(allowed))}",
            )
        return value

    def env_name(self, value, entry: str, example: str) -> str:
        """The name of an environment variable that holds a secret; its value is not read here."""
        if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
            self.fail(entry, f"{value!r} is not an environment variable name", f"write a name such as {example}")
        return value

    def duration(self, value, entry: str) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            d = parse_duration(value)
        except ValueError:
            self.fail(entry, f"{value!r} is not a duration", "write a number and a unit, e.g. 90s, 30m, 2h, 1d")
        if d <= timedelta(0):
            self.fail(entry, "must be longer than zero", "write e.g. 2h")
        return d
