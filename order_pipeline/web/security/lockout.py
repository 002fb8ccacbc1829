"""Per-account login throttling: after repeated wrong passwords an account is locked for a while.

The per-address limit (`ratelimit`) does nothing against guesses from many addresses; this
counts failures per user name, whatever their address. Five failures within 15 minutes lock
the name for a minute; each further lock while the failures go on is twice as long, up to an
hour. While locked every attempt is refused before its password is looked at, so a guess
cannot be tried at all, right or wrong. A success forgets the name's failures.

Names that are not staff are counted the same way, so the answers never tell a real
account from an invented one. The state is kept in memory, like the rate limits': the server
runs one worker (server.py), so every request of the app sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta


@dataclass(frozen=True)
class LockPolicy:
    failures: int = 5
    within: timedelta = timedelta(minutes=15)
    first_lock: timedelta = timedelta(minutes=1)
    longest_lock: timedelta = timedelta(hours=1)

    def lock_seconds(self, locks_before: int) -> float:
        return min(self.first_lock.total_seconds() * 2 ** min(locks_before, 32), self.longest_lock.total_seconds())


@dataclass(frozen=True)
class Account:
    """What is known of one user name: its recent failures (Unix seconds), and its lock."""

    failures: tuple[float, ...] = ()
    locked_until: float = 0.0
    locks: int = 0  # locks in a row; each doubles the next

    def quiet_since(self, now: float, policy: LockPolicy) -> bool:
        """Nothing recent: no failure within the window and no lock for as long, so nothing to remember."""
        last = max((*self.failures, self.locked_until), default=0.0)
        return now - last >= policy.within.total_seconds()


def locked_for(account: Account | None, now: float) -> int:
    """Seconds left of the account's lock (Retry-After), 0 when it may try."""
    if account is None or now >= account.locked_until:
        return 0
    return max(1, math.ceil(account.locked_until - now))


def record_failure(account: Account | None, now: float, policy: LockPolicy) -> tuple[Account, bool]:
    """The account after one more wrong password, and whether that starts a lock (a new burst)."""
    if account is None or account.quiet_since(now, policy):
        account = Account()
    recent = (*(t for t in account.failures if now - t < policy.within.total_seconds()), now)
    if len(recent) < policy.failures:
        return replace(account, failures=recent), False
    until = now + policy.lock_seconds(account.locks)
    return Account(recent[-policy.failures :], until, account.locks + 1), True


class Lockouts:
    """The accounts of one app, keyed by user name, kept to at most `max_names`."""

    def __init__(self, policy: LockPolicy = LockPolicy(), max_names: int = 100_000):
        self.policy, self.max_names = policy, max_names
        self.accounts: dict[str, Account] = {}

    def locked(self, name: str, now: float) -> int:
        return locked_for(self.accounts.get(name), now)

    def lock_end(self, name: str) -> float:
        account = self.accounts.get(name)
        return account.locked_until if account else 0.0

    def failed(self, name: str, now: float) -> bool:
        """Record a wrong password for `name`; True when it starts a lock."""
        account, locked = record_failure(self.accounts.get(name), now, self.policy)
        self.accounts[name] = account
        if len(self.accounts) > self.max_names:
            self._forget(now)
        return locked

    def succeeded(self, name: str) -> None:
        self.accounts.pop(name, None)

    def _forget(self, now: float) -> None:
        self.accounts = {k: a for k, a in self.accounts.items() if not a.quiet_since(now, self.policy)}
        if len(self.accounts) > self.max_names:  # still too many: keep the most recently locked or failed half
            recent = sorted(self.accounts.items(), key=lambda kv: max((*kv[1].failures, kv[1].locked_until)))
            self.accounts = dict(recent[len(recent) // 2 :])
