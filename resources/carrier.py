"""Kuaidi100 query client as a Dagster resource."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import dagster as dg
import httpx
from pydantic import PrivateAttr

from order_pipeline.carrier import protocol as kuaidi100
from order_pipeline.carrier import sandbox as carrier_sandbox
from order_pipeline.carrier.protocol import Kuaidi100Error, Kuaidi100Unavailable, TrackingAnswer
from order_pipeline.domain.http_retry import retry_after

SANDBOX_SCHEME = "sandbox://"
SANDBOX_URL = f"http://sandbox{carrier_sandbox.QUERY_PATH}"

# A pause longer than this (asked by Retry-After or grown by backoff) is better left
# to the next poll than waited out inside a run.
MAX_WAIT_SECONDS = 60.0


class Kuaidi100Client(dg.ConfigurableResource):
    """POST poll/query.do with retries on transient failures.

    `endpoint` is the real URL, or `sandbox:///path/to/carrier.db` to answer from the
    SQLite-backed stand-in in `order_pipeline.carrier_sandbox` over the same protocol.
    """

    endpoint: str = "https://poll.kuaidi100.com/poll/query.do"
    customer: str
    key: str
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
        attempts = max(self.retries, 0) + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(form)
            except _TryAgain as again:
                failure = again.error
                wait = max(self.backoff_seconds * 2 ** (attempt - 1), again.retry_after or 0.0)
            if attempt == attempts or wait > MAX_WAIT_SECONDS:
                break
            self._sleep(wait)
        raise Kuaidi100Unavailable(
            f"query of {com} {num} gave up after {attempt} attempt(s): {failure.message}",
            failure.return_code,
            retryable=True,
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def _attempt(self, form: dict[str, str]) -> TrackingAnswer:
        """One POST; raises _TryAgain for what another attempt may cure, Kuaidi100Error otherwise."""
        try:
            response = self._client().post(self._url(), data=form)
        except httpx.TimeoutException:
            raise _TryAgain(Kuaidi100Error(f"no answer within {self.timeout_seconds:g} s")) from None
        except httpx.TransportError as exc:
            raise _TryAgain(Kuaidi100Error(f"connection failed: {exc!r}")) from None
        if response.status_code == 429 or response.status_code >= 500:
            wait = retry_after(response)
            asked = f", retry after {wait:g} s" if wait is not None else ""
            raise _TryAgain(Kuaidi100Error(f"HTTP {response.status_code}{asked}"), wait)
        if response.is_error:
            raise Kuaidi100Error(f"HTTP {response.status_code} from {self._url()}")
        try:
            payload = json.loads(response.text)
        except ValueError:
            raise Kuaidi100Error(f"answer is not JSON: {response.text[:200]!r}") from None
        try:
            return kuaidi100.parse_answer(payload, self.timezone)
        except Kuaidi100Error as error:
            if error.return_code in kuaidi100.SERVER_FAULTS:
                raise _TryAgain(error) from None
            raise

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


class _TryAgain(Exception):
    """A failure another attempt may cure, with the wait the server asked for, if any."""

    def __init__(self, error: Kuaidi100Error, retry_after: float | None = None):
        self.error, self.retry_after = error, retry_after
