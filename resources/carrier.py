"""Kuaidi100 query and subscribe client as a Dagster resource."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
import httpx
from pydantic import PrivateAttr

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier import subscription
from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable, TrackingAnswer
from order_pipeline.carrier.subscription import Outcome, SubscribeAnswer
from order_pipeline.domain.http_retry import retry_after

SANDBOX_SCHEME = "sandbox://"
SANDBOX_URL = f"http://sandbox{carrier_sandbox.QUERY_PATH}"
SANDBOX_SUBSCRIBE_URL = f"http://sandbox{carrier_sandbox.SUBSCRIBE_PATH}"

T = TypeVar("T")

# A pause longer than this (asked by Retry-After or grown by backoff) is better left
# to the next poll than waited out inside a run.
MAX_WAIT_SECONDS = 60.0


class Kuaidi100Client(dg.ConfigurableResource):
    """POST poll/query.do and POST poll (subscribe) with retries on transient failures.

    `endpoint` is the real URL, or `sandbox:///path/to/carrier.db` to answer from the
    SQLite-backed stand-in in `order_pipeline.carrier.sandbox` over the same protocol.
    Subscriptions go to the same host's `/poll`; their pushes come to `callback_url`,
    signed with `salt`.
    """

    endpoint: str = "https://poll.kuaidi100.com/poll/query.do"
    customer: str
    key: str
    callback_url: str = ""
    salt: str = ""
    timeout_seconds: float = 10.0
    retries: int = 3  # further attempts after the first
    backoff_seconds: float = 0.5  # doubled after each failed attempt
    timezone: str = kuaidi100.DEFAULT_TZ

    _transport: httpx.BaseTransport | None = PrivateAttr(default=None)
    _sleep: Callable[[float], None] = PrivateAttr(default=time.sleep)
    _http: httpx.Client | None = PrivateAttr(default=None)

    def with_transport(
        self, transport: httpx.BaseTransport, sleep: Callable[[float], None] = time.sleep
    ) -> Kuaidi100Client:
        """A copy that sends through `transport` and waits with `sleep` (for tests)."""
        copy = self.model_copy()
        copy._transport, copy._sleep, copy._http = transport, sleep, None
        return copy

    def query(self, com: str, num: str, phone: str | None = None) -> TrackingAnswer:
        """The current tracking of one waybill; raises Kuaidi100Error when it cannot be had, and
        Kuaidi100Unavailable when the service gave no usable answer at all."""
        form = kuaidi100.query_form(com, num, phone, self.customer, self.key)
        return self._retrying(f"query of {com} {num}", lambda: self._attempt(self._url(), form, self._tracking))

    def subscribe(
        self, company: str, number: str, phone: str | None = None, from_: str | None = None, to: str | None = None
    ) -> SubscribeAnswer:
        """Ask Kuaidi100 to push this waybill's news to `callback_url`.

        A 500 is asked again with backoff and, still a 500 after the last attempt, returned as
        it is; an invalid or expired key (600, 601) and a rejection (700-702) are returned at
        once. Raises Kuaidi100Error when no answer came, or the client is not set up to subscribe.
        """
        if not self.callback_url or not self.salt:
            raise Kuaidi100Error(
                "cannot subscribe: set carrier.callback_url (where Kuaidi100 pushes) and carrier.push_salt_env "
                "(the variable holding the salt pushes are signed with)"
            )
        form = subscription.subscribe_form(company, number, self.key, self.callback_url, self.salt, phone, from_, to)
        return self._retrying(
            f"subscription of {company} {number}", lambda: self._attempt(self._subscribe_url(), form, _subscribe_answer)
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def _retrying(self, what: str, attempt_once: Callable[[], T]) -> T:
        """`attempt_once` until it succeeds, with doubling pauses; raises Kuaidi100Error when it gives up."""
        attempts = max(self.retries, 0) + 1
        for attempt in range(1, attempts + 1):
            try:
                return attempt_once()
            except _TryAgain as again:
                failure = again
                wait = max(self.backoff_seconds * 2 ** (attempt - 1), again.retry_after or 0.0)
            if attempt == attempts or wait > MAX_WAIT_SECONDS:
                break
            self._sleep(wait)
        if failure.answer is not None:
            return failure.answer
        raise Kuaidi100Unavailable(
            f"{what} gave up after {attempt} attempt(s): {failure.error.message}",
            failure.error.return_code,
            retryable=True,
        )

    def _tracking(self, payload: Any) -> TrackingAnswer:
        try:
            return kuaidi100.parse_answer(payload, self.timezone)
        except Kuaidi100Error as error:
            if error.return_code in kuaidi100.SERVER_FAULTS:
                raise _TryAgain(error) from None
            raise

    def _attempt(self, url: str, form: dict[str, str], parse: Callable[[Any], T]) -> T:
        """One POST; raises _TryAgain for what another attempt may cure, Kuaidi100Error otherwise."""
        try:
            response = self._client().post(url, data=form)
        except httpx.TimeoutException:
            raise _TryAgain(Kuaidi100Error(f"no answer within {self.timeout_seconds:g} s")) from None
        except httpx.TransportError as exc:
            raise _TryAgain(Kuaidi100Error(f"connection failed: {exc!r}")) from None
        if response.status_code == 429 or response.status_code >= 500:
            wait = retry_after(response)
            asked = f", retry after {wait:g} s" if wait is not None else ""
            raise _TryAgain(Kuaidi100Error(f"HTTP {response.status_code}{asked}"), wait)
        if response.is_error:
            raise Kuaidi100Error(f"HTTP {response.status_code} from {url}")
        try:
            payload = json.loads(response.text)
        except ValueError:
            raise Kuaidi100Error(f"answer is not JSON: {response.text[:200]!r}") from None
        return parse(payload)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(transport=self._transport_or_sandbox(), timeout=self.timeout_seconds)
        return self._http

    def _transport_or_sandbox(self) -> httpx.BaseTransport | None:
        if self._transport is None and self.endpoint.startswith(SANDBOX_SCHEME):
            db_path = self.endpoint.removeprefix(SANDBOX_SCHEME)
            return httpx.MockTransport(carrier_sandbox.handler(db_path, self.customer, self.key))
        return self._transport

    def _url(self) -> str:
        return SANDBOX_URL if self.endpoint.startswith(SANDBOX_SCHEME) else self.endpoint

    def _subscribe_url(self) -> str:
        if self.endpoint.startswith(SANDBOX_SCHEME):
            return SANDBOX_SUBSCRIBE_URL
        return subscription.subscribe_url(self.endpoint)


def _subscribe_answer(payload: Any) -> SubscribeAnswer:
    answer = subscription.parse_subscribe_answer(payload)
    if answer.outcome is Outcome.RETRY_LATER:
        raise _TryAgain(Kuaidi100Error(answer.message, answer.return_code, retryable=True), answer=answer)
    return answer


class _TryAgain(Exception):
    """A failure another attempt may cure, with the wait the server asked for, if any, and the
    answer to return should every attempt end the same way."""

    def __init__(self, error: Kuaidi100Error, retry_after: float | None = None, answer: Any = None):
        self.error, self.retry_after, self.answer = error, retry_after, answer
