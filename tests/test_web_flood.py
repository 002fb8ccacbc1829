"""A flood of multipart parts on one connection does not hold up anyone else: the real app under uvicorn."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import serve_app

from order_pipeline.web.hooks import PUSH_BODY_BYTES

FLOOD_PARTS = 34_000
SLOWEST_HEALTH_CHECK = 0.5  # seconds; a flood parsed on the event loop held every other request for ~5 s


def flood_body(parts: int, boundary: str = "b") -> bytes:
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\nxxxxx\r\n'.encode()
    return part * parts + f"--{boundary}--\r\n".encode()


@pytest.fixture
def served(client) -> Iterator[int]:
    """The test client's app served by uvicorn on a free loopback port; yields the port."""
    with serve_app(client.app, lifespan="off") as port:
        yield port


def send_flood(port: int, body: bytes, sent: threading.Event, answer: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/hooks/kuaidi100", body, {"Content-Type": "multipart/form-data; boundary=b"})
    sent.set()
    answer.append(conn.getresponse().status)
    conn.close()


def health_seconds(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    elapsed = time.perf_counter() - started
    assert response.status == 200 and response.read() == b"ok"
    conn.close()
    return elapsed


def test_health_check_stays_fast_while_a_multipart_flood_is_in_flight(served):
    body = flood_body(FLOOD_PARTS)
    assert len(body) < PUSH_BODY_BYTES  # under the body cap: the part limit is what refuses it
    sent, answer = threading.Event(), []
    flood = threading.Thread(target=send_flood, args=(served, body, sent, answer))
    flood.start()
    assert sent.wait(timeout=30)
    latencies = [health_seconds(served)]
    while flood.is_alive() or len(latencies) < 5:
        latencies.append(health_seconds(served))
    flood.join()
    assert answer == [413]
    assert max(latencies) < SLOWEST_HEALTH_CHECK, f"slowest /healthz {max(latencies):.3f}s of {len(latencies)}"
