"""The real thing in a real browser: uvicorn serving the app, headless Chromium clicking through it.

Needs Debian's Chromium (`apt-get install -y chromium fonts-wqy-microhei`). Without it the tests
skip, unless REQUIRE_BROWSER=1, where they fail. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from helpers import LINK_SECRET, ORDER_IN_TRANSIT, PHONE_TAIL, STAFF_PASSWORD, STAFF_USER, WAYBILL, build_world

from order_pipeline.domain.links import make_token
from order_pipeline.notify import ledger

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SENT_AT = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
REPO = Path(__file__).resolve().parent.parent


def _unavailable(reason: str):
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (REQUIRE_BROWSER=1)")
    pytest.skip(f"{reason}; set REQUIRE_BROWSER=1 to make this a failure")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install -y chromium fonts-wqy-microhei)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as e:
            _unavailable(f"Chromium does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@contextmanager
def serving(world) -> Iterator[str]:
    """The app of `world` under uvicorn in its own process, on a free loopback port; yields its base URL."""
    # Listening before the server starts: the first request waits in the backlog until the server
    # accepts it, so nothing polls for readiness.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    env = {**os.environ, **world.env}
    log = (world.root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "order_pipeline.web.server",
            "--config",
            str(world.config_path),
            "--fd",
            str(sock.fileno()),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[sock.fileno()],
    )
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        try:
            ready = httpx.get(f"{base}/healthz", timeout=30).text == "ok"
        except httpx.HTTPError:
            ready = False
        finally:
            sock.close()  # the server has its own copy
        if not ready:
            log.flush()
            pytest.fail(f"the web server did not start:\n{(world.root / 'server.log').read_text()}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        world.engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page with every public field; the order in transit has had one customer message."""
    world = build_world(tmp_path_factory.mktemp("browser"))
    ledger.ensure_schema(world.engine)
    with world.engine.begin() as conn:
        ledger.record(conn, [{"order_no": ORDER_IN_TRANSIT, "event": "shipped", "event_key": "shipped"}], SENT_AT)
    with serving(world) as base:
        yield base


@pytest.fixture(scope="module")
def narrow_server(tmp_path_factory):
    """The page with `tracking_page.public_fields: [stage]`."""
    with serving(build_world(tmp_path_factory.mktemp("narrow"), public_fields=["stage"])) as base:
        yield base


def _link(base: str, order_no: str, expires: datetime) -> str:
    return f"{base}/order/{order_no}?t={make_token(order_no, expires, LINK_SECRET.encode())}"


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def phone_page(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, locale="zh-CN")
    yield context.new_page()
    context.close()


def test_customer_link_shows_timeline_and_masked_phone(server, phone_page):
    now = datetime.now(UTC)
    response = phone_page.goto(_link(server, ORDER_IN_TRANSIT, now + timedelta(days=7)))
    assert response.status == 200
    steps = phone_page.locator("ol.steps li")
    assert steps.count() == 6
    assert phone_page.locator("ol.steps li.current").inner_text().startswith("配送中")
    assert "138****5678" in phone_page.locator("body").inner_text()
    assert phone_page.locator("ul.events li").count() == 3
    _shot(phone_page, "customer-zh")
    phone_page.get_by_text("English").click()
    assert "In transit" in phone_page.locator("ol.steps li.current").inner_text()
    _shot(phone_page, "customer-en")


def test_expired_link_shows_410_page(server, phone_page):
    now = datetime.now(UTC)
    response = phone_page.goto(_link(server, ORDER_IN_TRANSIT, now - timedelta(hours=1)))
    assert response.status == 410
    assert "链接已过期" in phone_page.locator("h1").inner_text()
    assert "新的查询链接" in phone_page.locator("body").inner_text()
    _shot(phone_page, "customer-expired")


def test_staff_login_search_by_phone_tail_and_open_order(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(f"{server}/ops/")
        assert "/ops/login" in page.url
        _shot(page, "ops-login")
        page.fill("#username", STAFF_USER)
        page.fill("#password", STAFF_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server}/ops/")
        assert "各阶段订单" in page.locator("main").inner_text()
        _shot(page, "ops-overview")
        page.fill("input[name=q]", PHONE_TAIL)
        page.press("input[name=q]", "Enter")
        page.wait_for_url("**/ops/search?q=5678")
        assert "2 个订单" in page.locator("main").inner_text()
        _shot(page, "ops-search")
        page.click(f"a[href='/ops/order/{ORDER_IN_TRANSIT}']")
        page.wait_for_url(f"**/ops/order/{ORDER_IN_TRANSIT}")
        text = page.locator("main").inner_text()
        assert "13812345678" in text and "顺丰速运" in text
        cells = page.locator("table.messages tr").nth(1).locator("td").all_inner_texts()
        assert cells[:4] == ["2026-11-24 09:00", "已发货", "—", "待发送"]
        _shot(page, "ops-order")
    finally:
        context.close()


def test_a_narrow_choice_of_fields_leaves_the_rest_out_of_the_dom(narrow_server, phone_page):
    response = phone_page.goto(_link(narrow_server, ORDER_IN_TRANSIT, datetime.now(UTC) + timedelta(days=7)))
    assert response.status == 200
    assert phone_page.locator("p.status").inner_text() == "配送中"
    assert phone_page.locator("ol.steps li").count() == 6
    dom = phone_page.content()  # the live DOM, hidden elements included
    for absent in (WAYBILL, "顺丰", "138****5678", "张*", "南山区", "299", "预计送达", "物流动态"):
        assert absent not in dom, absent
    assert phone_page.locator("ul.events, dl.kv").count() == 0
    _shot(phone_page, "customer-stage-only")


def test_a_wide_choice_of_fields_shows_them_all(server, phone_page):
    phone_page.goto(_link(server, ORDER_IN_TRANSIT, datetime.now(UTC) + timedelta(days=7)))
    text = phone_page.locator("body").inner_text()
    for shown in (
        "配送中",
        "包裹正在运输途中",
        "预计送达",
        "顺丰速运",
        WAYBILL,
        "2 种，共 3 件",
        "¥299.00",
        "张*",
        "138****5678",
        "广东省深圳市南山区",
    ):
        assert shown in text, shown
    assert phone_page.locator("ul.events li").count() == 3
    assert phone_page.locator("ol.steps li").count() == 6


def test_a_customer_without_the_message_finds_the_order_by_its_number_and_phone_tail(server, phone_page):
    assert phone_page.goto(f"{server}/track").status == 200
    phone_page.fill("#order_no", ORDER_IN_TRANSIT)
    phone_page.fill("#tail", "0000")
    phone_page.click("button[type=submit]")
    phone_page.wait_for_url(f"{server}/track")
    assert "订单号或手机号后四位不正确" in phone_page.locator("[role=alert]").inner_text()
    assert phone_page.input_value("#tail") == ""  # nothing typed comes back
    _shot(phone_page, "lookup-no-match")
    phone_page.fill("#order_no", ORDER_IN_TRANSIT)
    phone_page.fill("#tail", PHONE_TAIL)
    phone_page.click("button[type=submit]")
    phone_page.wait_for_url(f"**/order/{ORDER_IN_TRANSIT}?t=*")
    assert phone_page.locator("ol.steps li.current").inner_text().startswith("配送中")
    assert "138****5678" in phone_page.locator("body").inner_text()
    _shot(phone_page, "lookup-found")
