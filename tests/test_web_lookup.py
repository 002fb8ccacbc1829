"""The lookup form (/track): order number + phone tail -> a fresh signed link; never an oracle of whether
an order exists or of a phone's digits; locks per order number, limits per address, CSRF, the audit."""

from __future__ import annotations

import hmac
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from helpers import (
    NOW,
    ORDER_EXCEPTION,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    PHONE_TAIL,
    SECRET,
    TestClient,
    WebClient,
    access_rows,
    link_path,
    page_csrf,
)

from order_pipeline.contract.schema import alert_queue, metadata
from order_pipeline.domain.links import TokenCheck, verify_token
from order_pipeline.web.customer import lookup as lookup_module
from order_pipeline.web.customer.lookup import phone_tail, tail_matches, typed_order_no, typed_tail
from order_pipeline.web.ops import queries
from order_pipeline.web.settings import WebSettings

UNKNOWN = "SO9999"
WRONG_TAIL = "0000"
LOCK_SECONDS = 15 * 60


class Visitor(TestClient):
    """A browser at one address that has opened the form, so it holds the form's cookie and token."""

    def __init__(self, client: WebClient, ip: str):
        super().__init__(client.app, client=(ip, 50000))
        self.csrf = page_csrf(self.get("/track").text)


def visitor(client: WebClient, ip: str = "203.0.113.7") -> Visitor:
    return Visitor(client, ip)


def ask(page: Visitor, order_no: str, tail: str, **extra):
    data = {"csrf": page.csrf, "order_no": order_no, "tail": tail, **extra}
    return page.post("/track", data=data, follow_redirects=False)


def ask_from(client: WebClient, i: int, order_no: str, tail: str):
    """One lookup from its own address, so that the per-address limit stays out of the way."""
    return ask(visitor(client, f"198.51.100.{i}"), order_no, tail)


def test_the_form_is_served_with_its_own_cookie(client):
    r = client.get("/track")
    assert r.status_code == 200 and 'action="/track"' in r.text and 'name="tail"' in r.text
    cookie = r.headers["set-cookie"]
    assert "track_form=" in cookie and "HttpOnly" in cookie and "Path=/track" in cookie
    assert "samesite=strict" in cookie.lower() and "Secure" not in cookie  # the test world's base_url is http
    assert r.headers["cache-control"] == "no-store" and "form-action 'self'" in r.headers["content-security-policy"]
    assert "Find your order" in client.get("/track?lang=en").text


def test_the_right_tail_redirects_to_a_fresh_link_the_page_accepts(client, clock):
    page = visitor(client)
    r = ask(page, ORDER_IN_TRANSIT, PHONE_TAIL)
    assert r.status_code == 303 and r.headers["cache-control"] == "no-store"
    location = urlsplit(r.headers["location"])
    assert location.path == f"/order/{ORDER_IN_TRANSIT}" and not location.netloc
    token = parse_qs(location.query)["t"][0]
    assert verify_token(ORDER_IN_TRANSIT, token, SECRET, NOW) is TokenCheck.VALID
    assert token.split(".")[0] == str(int((NOW + timedelta(days=7)).timestamp()))  # valid for link_ttl
    shown = page.get(r.headers["location"])
    assert shown.status_code == 200 and '<li class="current">配送中' in shown.text


def test_the_english_form_lands_on_the_english_page(client):
    r = ask(visitor(client), ORDER_PAID, PHONE_TAIL, lang="en")
    assert r.status_code == 303 and parse_qs(urlsplit(r.headers["location"]).query)["lang"] == ["en"]


@pytest.mark.parametrize("typed", [" 5678 ", "５６７８", "56 78"])
def test_the_tail_may_be_typed_with_spaces_or_full_width_digits(client, typed):
    assert ask(visitor(client), f" {ORDER_IN_TRANSIT} ", typed).status_code == 303


def test_a_wrong_tail_and_an_unknown_order_get_the_same_bytes(client):
    page = visitor(client)
    wrong = ask(page, ORDER_IN_TRANSIT, WRONG_TAIL)
    unknown = ask(page, UNKNOWN, WRONG_TAIL)
    other_tail = ask(page, ORDER_EXCEPTION, PHONE_TAIL)  # the tail of another order
    assert wrong.status_code == unknown.status_code == other_tail.status_code == 404
    assert wrong.content == unknown.content == other_tail.content
    assert dict(wrong.headers) == dict(unknown.headers) == dict(other_tail.headers)
    assert "订单号或手机号后四位不正确" in wrong.text


def test_no_answer_echoes_what_was_typed_or_a_digit_of_the_phone(client):
    page = visitor(client)
    for order_no, tail in ((ORDER_IN_TRANSIT, "5677"), (UNKNOWN, "4321"), (ORDER_IN_TRANSIT, "56x8")):
        body = ask(page, order_no, tail).text
        assert tail not in body and PHONE_TAIL not in body and order_no not in body


def test_an_unknown_order_costs_the_same_lookup_and_comparison(client, monkeypatch):
    reads: list[str] = []
    compares: list[tuple[bytes, bytes]] = []
    real_read, real_compare = queries.order_phone, hmac.compare_digest
    monkeypatch.setattr(queries, "order_phone", lambda conn, no: reads.append(no) or real_read(conn, no))
    monkeypatch.setattr(
        lookup_module.hmac, "compare_digest", lambda a, b: compares.append((a, b)) or real_compare(a, b)
    )
    page = visitor(client)
    ask(page, ORDER_IN_TRANSIT, WRONG_TAIL)
    first = len(compares)
    ask(page, UNKNOWN, WRONG_TAIL)
    assert reads == [ORDER_IN_TRANSIT, UNKNOWN]
    assert first == len(compares) - first  # the CSRF check and the tail's, for each
    tail_compares = [c for c in compares if c[1] == WRONG_TAIL.encode()]
    assert [len(a) for a, _ in tail_compares] == [4, 4]  # a dummy of a tail's length when there is no order


@pytest.mark.parametrize(
    "order_no, tail",
    [(ORDER_IN_TRANSIT, "567"), (ORDER_IN_TRANSIT, "56789"), (ORDER_IN_TRANSIT, "56a8"), ("../x", "5678"), ("", "")],
)
def test_a_malformed_entry_is_the_form_again_and_not_a_guess(client, order_no, tail):
    for i in range(6):
        r = ask_from(client, i, order_no, tail)
        assert r.status_code == 400 and "4 位数字" in r.text
    assert ask_from(client, 99, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303


def test_five_wrong_tails_lock_the_order_even_against_the_right_one_until_it_expires(client, clock):
    answers = [ask_from(client, i, ORDER_IN_TRANSIT, WRONG_TAIL) for i in range(8)]
    assert [r.status_code for r in answers] == [404] * 5 + [429] * 3
    assert {r.headers["retry-after"] for r in answers[5:]} == {str(LOCK_SECONDS)}
    assert ask_from(client, 50, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 429  # the right tail too
    assert ask_from(client, 51, ORDER_PAID, PHONE_TAIL).status_code == 303  # another order is not locked
    clock.advance(LOCK_SECONDS - 1)
    assert ask_from(client, 52, ORDER_IN_TRANSIT, PHONE_TAIL).headers["retry-after"] == "1"
    clock.advance(1)
    assert ask_from(client, 53, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303
    # Guessing on right after the lock: the next lock is twice as long.
    assert [ask_from(client, 60 + i, ORDER_IN_TRANSIT, WRONG_TAIL).status_code for i in range(5)] == [404] * 5
    assert ask_from(client, 70, ORDER_IN_TRANSIT, PHONE_TAIL).headers["retry-after"] == str(2 * LOCK_SECONDS)


def test_four_wrong_tails_do_not_lock_and_a_right_one_does_not_clear_them(client):
    assert [ask_from(client, i, ORDER_IN_TRANSIT, WRONG_TAIL).status_code for i in range(4)] == [404] * 4
    assert ask_from(client, 10, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303
    assert ask_from(client, 11, ORDER_IN_TRANSIT, WRONG_TAIL).status_code == 404  # the fifth wrong one
    assert ask_from(client, 12, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 429


def test_wrong_tails_older_than_fifteen_minutes_do_not_count(client, clock):
    for i in range(4):
        ask_from(client, i, ORDER_IN_TRANSIT, WRONG_TAIL)
    clock.advance(15 * 60)
    assert ask_from(client, 10, ORDER_IN_TRANSIT, WRONG_TAIL).status_code == 404
    assert ask_from(client, 11, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303


def test_an_unknown_order_is_locked_alike_and_its_lock_answers_the_same(client):
    for i in range(5):
        ask_from(client, i, ORDER_IN_TRANSIT, WRONG_TAIL)
        ask_from(client, 20 + i, UNKNOWN, WRONG_TAIL)
    known, unknown = ask_from(client, 40, ORDER_IN_TRANSIT, WRONG_TAIL), ask_from(client, 41, UNKNOWN, WRONG_TAIL)
    assert known.status_code == unknown.status_code == 429
    assert known.content == unknown.content and known.headers["retry-after"] == unknown.headers["retry-after"]


def test_each_address_has_its_lookup_limit(make_client, clock):
    client = make_client({"rate_limits": {"per_ip": "1000/1m", "per_order": "1000/1m", "lookup": "3/1h"}})
    page = visitor(client, "203.0.113.5")
    assert [ask(page, o, t).status_code for o, t in ((UNKNOWN, "1"), (ORDER_PAID, WRONG_TAIL), (UNKNOWN, "1234"))] == [
        400,
        404,
        404,
    ]
    over = ask(page, ORDER_IN_TRANSIT, PHONE_TAIL)  # even the right tail, and before the CSRF token is looked at
    assert over.status_code == 429 and over.headers["retry-after"] == "1200"
    assert ask(visitor(client, "203.0.113.6"), ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303
    clock.advance(1200)
    assert ask(page, ORDER_IN_TRANSIT, PHONE_TAIL).status_code == 303
    rows = [r["outcome"] for r in access_rows(client)]
    assert rows.count("rate_limited:1") == 1


def test_the_lookup_limit_is_read_from_the_config(make_client):
    config = make_client({"rate_limits": {"lookup": "off"}}).world.config()
    assert WebSettings.from_config(config).rate_limits.lookup is None
    default = make_client().web.settings.rate_limits.lookup
    assert default is not None and (default.count, default.period) == (20, timedelta(hours=1))


@pytest.mark.parametrize(
    "cookie, token",
    [(None, "from-page"), ("another-nonce", "from-page"), ("keep", ""), ("keep", "forged")],
)
def test_a_lookup_without_the_form_s_token_is_refused(client, cookie, token):
    page = visitor(client)
    if cookie is None:
        page.cookies.clear()
    elif cookie != "keep":
        page.cookies.set("track_form", cookie, path="/track")
    data = {"order_no": ORDER_IN_TRANSIT, "tail": PHONE_TAIL, "csrf": page.csrf if token == "from-page" else token}
    r = page.post("/track", data=data, follow_redirects=False)
    assert r.status_code == 403 and "location" not in r.headers
    assert "csrf_refused" in [row["outcome"] for row in access_rows(client)]


@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"content": b"x" * 5000, "headers": {"content-type": "application/x-www-form-urlencoded"}}, 413),
        ({"json": {"order_no": ORDER_IN_TRANSIT, "tail": PHONE_TAIL}}, 415),
        ({"files": {"tail": ("t", b"5678")}}, 415),
    ],
)
def test_a_body_that_is_not_the_form_is_refused(client, kwargs, status):
    assert client.post("/track", follow_redirects=False, **kwargs).status_code == status
    assert [row["outcome"] for row in access_rows(client)] == ["form_refused"]


def test_every_lookup_is_audited_without_a_digit_of_a_tail(client):
    ask_from(client, 1, ORDER_IN_TRANSIT, PHONE_TAIL)
    for i in range(5):
        ask_from(client, 10 + i, ORDER_IN_TRANSIT, "1357")
    ask_from(client, 20, UNKNOWN, "2468")
    ask_from(client, 21, ORDER_IN_TRANSIT, PHONE_TAIL)
    ask_from(client, 22, ORDER_IN_TRANSIT, "9753")
    client.web.access_log.close()
    rows = access_rows(client)
    assert {r["actor"] for r in rows} == {"customer"}
    lookups = [(r["order_no"], r["outcome"]) for r in rows if r["outcome"] != "lookup_form"]
    assert lookups == [
        (ORDER_IN_TRANSIT, "lookup_ok"),
        *[(ORDER_IN_TRANSIT, "lookup_wrong_tail")] * 5,
        (ORDER_IN_TRANSIT, "lookup_burst"),  # once for the burst
        (UNKNOWN, "lookup_unknown_order"),
        (ORDER_IN_TRANSIT, "lookup_locked:2"),  # the right tail and a wrong one while locked: one counted row
    ]
    assert sum(r["outcome"] == "lookup_form" for r in rows) == 9 and all(r["ip_hash"] for r in rows)
    for row in rows:
        text = " ".join(str(row[k]) for k in ("order_no", "actor", "outcome", "user_agent"))
        assert not any(tail in text for tail in (PHONE_TAIL, "1357", "2468", "9753"))


def test_a_lock_of_a_real_order_alerts_the_team_once_and_an_invented_one_does_not(client, clock):
    metadata.create_all(client.world.engine, tables=[alert_queue])
    for i in range(8):
        ask_from(client, i, ORDER_IN_TRANSIT, f"11{i:02d}")
        ask_from(client, 20 + i, UNKNOWN, f"22{i:02d}")
    with client.world.engine.connect() as conn:
        queued = conn.execute(sa.select(alert_queue)).mappings().all()
    assert [(q["rule_id"], q["entity_key"], q["target"], q["channel"]) for q in queued] == [
        ("customer_lookup_burst", ORDER_IN_TRANSIT, "data", "outbox")
    ]
    payload = queued[0]["payload"]
    assert ORDER_IN_TRANSIT in payload and "5 wrong phone tails" in payload
    assert not any(tail in payload for tail in (PHONE_TAIL, *(f"11{i:02d}" for i in range(8))))
    outcomes = [(r["order_no"], r["outcome"]) for r in access_rows(client)]
    assert outcomes.count((UNKNOWN, "lookup_burst")) == outcomes.count((ORDER_IN_TRANSIT, "lookup_burst")) == 1


def test_a_failing_alert_queue_leaves_the_lock_and_the_answer_alone(client):
    # No alert_queue table in this warehouse: the message cannot be queued, the lock holds all the same.
    answers = [ask_from(client, i, ORDER_IN_TRANSIT, WRONG_TAIL).status_code for i in range(6)]
    assert answers == [404] * 5 + [429]


@pytest.mark.parametrize(
    "phone, typed, matches",
    [
        ("13812345678", "5678", True),
        ("138-1234-5678", "5678", True),
        ("+86 138 1234 5678", "5678", True),
        ("13812345678", "5677", False),
        ("13812345678", "1234", False),
        ("678", "0678", False),
        (None, "0000", False),
        ("", "0000", False),
    ],
)
def test_tail_matches(phone, typed, matches):
    assert tail_matches(typed, phone) is matches


def test_what_is_read_from_the_form():
    assert typed_tail("５６７８") == "5678" and typed_tail(" 56 78 ") == "5678"
    assert typed_tail("567") is typed_tail("56789") is typed_tail("五六七八") is typed_tail(None) is None
    assert typed_tail("٥٦٧٨") is None  # digits of another script are not a tail
    assert typed_order_no(" SO1001 ") == "SO1001" and typed_order_no("ＳＯ1001") == "SO1001"
    assert typed_order_no("SO 1001") is typed_order_no("") is typed_order_no("A" * 65) is None
    assert phone_tail("13812345678") == "5678" and phone_tail("123") is None


def test_an_expired_link_points_to_the_form_and_only_it(client):
    expired = client.get(link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(hours=1)))
    assert expired.status_code == 410 and '<a href="/track">用订单号和手机号后四位重新查询</a>' in expired.text
    english = client.get(link_path(ORDER_IN_TRANSIT, expires=NOW - timedelta(hours=1), lang="en"))
    assert '<a href="/track?lang=en">' in english.text
    assert "/track" not in client.get(f"/order/{ORDER_IN_TRANSIT}?t=forged").text
