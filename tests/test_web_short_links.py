"""GET /s/{code}, the short link of an SMS: to the order's signed page with the same expiry, the
expired-link page, or one 404 for every code that is not there; rate limited and audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from helpers import (
    NOW,
    ORDER_IN_TRANSIT,
    ORDER_PAID,
    SECRET,
    D,
    H,
    S,
    WebClient,
    access_rows,
    build_world,
)

from order_pipeline.contract.customer_schema import tracking_short_links
from order_pipeline.domain.links import make_token
from order_pipeline.notify import ledger
from order_pipeline.web.app import create_app
from order_pipeline.web.ops import queries

CODE, EXPIRED, EDGE = "AbCdEfGh12", "Zz9Yy8Xx7W", "Edge000001"
EXPIRES = NOW + 3 * D + 17 * S  # a link sent four days ago, valid seven days


def add_links(engine: sa.Engine, *links: tuple[str, str, datetime]) -> None:
    ledger.ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(tracking_short_links.insert(), [{"code": c, "order_no": o, "expires_at": e} for c, o, e in links])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def links_client(request, tmp_path, clock, monkeypatch) -> Iterator[WebClient]:
    """A WebClient whose warehouse (SQLite or PostgreSQL) has three short links."""
    url = request.getfixturevalue("pg_database")() if request.param == "postgres" else None
    world = build_world(tmp_path / "w", url=url)
    add_links(
        world.engine,
        (CODE, ORDER_IN_TRANSIT, EXPIRES),
        (EXPIRED, ORDER_PAID, NOW - H),
        (EDGE, ORDER_PAID, NOW + S),
    )
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    client = WebClient(create_app(world.config(), engine=world.engine, clock=clock), world)
    yield client
    client.close()
    world.engine.dispose()


def test_a_short_link_opens_the_orders_signed_page_until_the_same_expiry(links_client):
    client = links_client
    r = client.get(f"/s/{CODE}", follow_redirects=False)
    assert r.status_code == 303
    token = make_token(ORDER_IN_TRANSIT, EXPIRES, SECRET)
    assert r.headers["location"] == f"http://testserver/order/{ORDER_IN_TRANSIT}?t={token}"
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
    target = urlsplit(r.headers["location"])
    page = client.get(f"{target.path}?{target.query}")
    assert page.status_code == 200 and ORDER_IN_TRANSIT in page.text  # the page's own check accepts it
    assert [(a["order_no"], a["actor"], a["outcome"]) for a in access_rows(client)] == [
        (ORDER_IN_TRANSIT, "customer", "ok"),
        (ORDER_IN_TRANSIT, "customer", "ok"),
    ]


def test_an_expired_short_link_shows_the_expired_page_with_the_lookup(links_client, clock):
    client = links_client
    r = client.get(f"/s/{EXPIRED}", follow_redirects=False)
    assert r.status_code == 410 and "链接已过期" in r.text and 'href="/track"' in r.text
    assert client.get(f"/s/{EDGE}", follow_redirects=False).status_code == 303  # a second before its end
    clock.advance(1)
    assert client.get(f"/s/{EDGE}", follow_redirects=False).status_code == 410  # at its end
    assert "This link has expired" in client.get(f"/s/{EXPIRED}", params={"lang": "en"}).text
    rows = access_rows(client)
    assert [(a["order_no"], a["outcome"]) for a in rows] == [
        (ORDER_PAID, "expired"),
        (ORDER_PAID, "ok"),
        (ORDER_PAID, "expired"),
        (ORDER_PAID, "expired"),
    ]


@pytest.mark.parametrize(
    "code",
    [
        "AbCdEfGh13",  # well-formed, unknown
        "abcdefgh12",  # the known code in other letters: codes are case-sensitive
        "AbCdEfGh1",  # too short
        "AbCdEfGh123",  # too long
        "AbCdE-Gh12",
        "ＡｂＣｄＥｆＧｈ１２",  # full-width
        "%00bCdEfGh12",
    ],
)
def test_unknown_and_malformed_codes_get_one_answer_after_one_lookup(client, monkeypatch, code):
    add_links(client.world.engine, (CODE, ORDER_IN_TRANSIT, EXPIRES))
    looked_up: list[str] = []
    real = queries.short_link

    def spy(conn, key):
        looked_up.append(key)
        return real(conn, key)

    monkeypatch.setattr(queries, "short_link", spy)
    reference = client.get("/s/Unknown000")
    r = client.get(f"/s/{code}", follow_redirects=False)
    assert r.status_code == 404 and r.content == reference.content
    assert 'href="/track"' in r.text and code not in r.text
    assert len(looked_up) == 2  # a malformed code is looked up too, as one that matches nothing
    assert [(a["order_no"], a["outcome"]) for a in access_rows(client)] == [(None, "not_found")] * 2
    assert code not in repr(access_rows(client))


def test_without_the_short_link_table_every_code_is_unknown(client):
    assert client.get(f"/s/{CODE}").status_code == 404
    assert not sa.inspect(client.world.engine).has_table(tracking_short_links.name)


def test_short_links_share_the_order_pages_per_address_limit(make_client):
    client = make_client({"rate_limits": {"per_ip": "3/1m", "per_order": "1000/1m"}})
    add_links(client.world.engine, (CODE, ORDER_IN_TRANSIT, EXPIRES))
    assert client.get(f"/s/{CODE}", follow_redirects=False).status_code == 303
    assert client.get("/s/Unknown000").status_code == 404
    assert client.get(f"/order/{ORDER_IN_TRANSIT}?t=bad").status_code == 403
    r = client.get(f"/s/{CODE}", follow_redirects=False)
    assert r.status_code == 429 and r.headers["retry-after"] == "20"
    assert client.get(f"/order/{ORDER_IN_TRANSIT}?t=bad").status_code == 429
    assert [a["outcome"] for a in access_rows(client)] == ["ok", "not_found", "forbidden", "rate_limited:2"]
