"""Token-bucket rate limiting: a pure step function and a small in-memory keeper.

A rule `60/1m` allows a burst of 60 requests and refills at 60 per minute, so
a customer refreshing a page never notices it while a scraper is slowed to the
refill rate. Time is passed in, so tests drive it with a fake clock.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Rate:
    count: int
    period: timedelta

    @property
    def per_second(self) -> float:
        return self.count / self.period.total_seconds()


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float  # Unix seconds of the last update


def client_key(ip: str) -> str:
    """The rate-limit key of a client: its IPv4 address, or its IPv6 /64 (one household or phone)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 4:
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.ip_network(f"{addr}/64", strict=False))


def take(bucket: Bucket | None, now: float, rate: Rate) -> tuple[Bucket, int]:
    """Spend one token. Returns the new bucket and 0 when allowed, else the seconds to wait (Retry-After)."""
    if bucket is None:
        tokens = float(rate.count)
    else:
        elapsed = max(0.0, now - bucket.at)
        tokens = min(float(rate.count), bucket.tokens + elapsed * rate.per_second)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0
    return Bucket(tokens, now), max(1, math.ceil((1.0 - tokens) / rate.per_second))


def is_full(bucket: Bucket, now: float, rate: Rate) -> bool:
    """A bucket that has refilled completely carries no information and can be forgotten."""
    return bucket.tokens + (now - bucket.at) * rate.per_second >= rate.count


class RateLimiter:
    """Buckets per key for one rule, kept in memory (one server process)."""

    def __init__(self, rate: Rate | None, max_keys: int = 100_000):
        self.rate, self.max_keys = rate, max_keys
        self.buckets: dict[str, Bucket] = {}

    def hit(self, key: str, now: float) -> int:
        """0 when the request may go on, else the Retry-After in seconds."""
        rate = self.rate
        if rate is None:
            return 0
        bucket, wait = take(self.buckets.get(key), now, rate)
        self.buckets[key] = bucket
        if len(self.buckets) > self.max_keys:
            self._forget_full(now, rate)
        return wait

    def _forget_full(self, now: float, rate: Rate) -> None:
        self.buckets = {k: b for k, b in self.buckets.items() if not is_full(b, now, rate)}
        if len(self.buckets) > self.max_keys:  # still too many: keep the most recent half
            recent = sorted(self.buckets.items(), key=lambda kv: kv[1].at)[len(self.buckets) // 2 :]
            self.buckets = dict(recent)
