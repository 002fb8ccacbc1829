"""The WeChat template-message channel: its answers, the shared access token, keyword limits, the stand-in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from helpers import NOW, FakeClock, H, M, S, mock, serve_app

from order_pipeline.contract.customer_schema import wechat_access_tokens
from order_pipeline.contract.schema import metadata
from order_pipeline.notify.channels.message import CustomerMessage, Failure, SendError, Sent
from order_pipeline.notify.channels.wechat import SEND_PATH, TOKEN_PATH, WeChatTemplate, keyword_problem
from order_pipeline.notify.channels.wechat_tokens import CachedToken, TokenStore
from order_pipeline.notify.sandbox.wechat import FORCE_PER_DAY, WeChatSandbox, app, handler
from order_pipeline.warehouse.engine import create_engine

APP_ID, APP_SECRET = "wx0123456789abcdef", "app-secret-0123456789abcdef012345"
OPENID, TEMPLATE = "oFollower_0001", "tmpl-shipped-0001"
OLD_TOKEN = "OLD_TOKEN_abcdefghijklmnopqrstuvwxyz"
NEW_TOKEN = "NEW_TOKEN_zyxwvutsrqponmlkjihgfedcba"

MSG = CustomerMessage(
    key="SO-1001:link",
    template=TEMPLATE,
    params=(("character_string1", "SO-1001"), ("thing2", "您的订单已发货"), ("time3", "2026年11月25日 10:00")),
    openid=OPENID,
    url="https://track.example.com/order/SO-1001?t=abc",
)


@pytest.fixture
def wh_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = create_engine(url)
    metadata.create_all(engine, tables=[wechat_access_tokens])
    engine.dispose()
    return url


@pytest.fixture
def store(wh_url) -> Iterator[TokenStore]:
    engine = create_engine(wh_url)
    yield TokenStore(engine)
    engine.dispose()


def cached(store: TokenStore, token: str = OLD_TOKEN, fetched_ago=H) -> None:
    """A token fetched `fetched_ago` before NOW, valid for two hours from its fetch."""
    store.put(APP_ID, token, NOW - fetched_ago + 2 * H, NOW - fetched_ago)


def channel(store: TokenStore, transport: httpx.BaseTransport, clock: Callable = lambda: NOW) -> WeChatTemplate:
    return WeChatTemplate(APP_ID, APP_SECRET, store, api="https://wechat.test", transport=transport, clock=clock)


def ok(msgid: int = 200228332) -> httpx.Response:
    return httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "msgid": msgid})


def err(code: int, message: str = "refused") -> httpx.Response:
    return httpx.Response(200, json={"errcode": code, "errmsg": f"{message} rid: 1-2-3"})


def token_answer(token: str = NEW_TOKEN) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": 7200})


def failure_of(ch: WeChatTemplate, msg: CustomerMessage = MSG) -> SendError:
    with pytest.raises(SendError) as raised:
        ch.send(msg)
    return raised.value


# --- what goes out, and what comes back ---------------------------------------------------------------


def test_sends_the_template_with_the_cached_token_and_returns_the_msgid(store):
    cached(store)
    transport, seen = mock(ok(3717005636572528642))
    assert channel(store, transport).send(MSG) == Sent("3717005636572528642")
    (request,) = seen
    assert request.url.path == SEND_PATH and request.url.params["access_token"] == OLD_TOKEN
    assert json.loads(request.content) == {
        "touser": OPENID,
        "template_id": TEMPLATE,
        "url": MSG.url,
        "data": {
            "character_string1": {"value": "SO-1001"},
            "thing2": {"value": "您的订单已发货"},
            "time3": {"value": "2026年11月25日 10:00"},
        },
        "client_msg_id": "SO-1001:link",
    }


def test_no_url_no_url_field(store):
    cached(store)
    transport, seen = mock(ok())
    channel(store, transport).send(CustomerMessage("k", TEMPLATE, (("thing1", "已发货"),), openid=OPENID))
    assert "url" not in json.loads(seen[0].content)


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (43004, Failure.UNREACHABLE),  # not a follower: the SMS goes instead
        (43101, Failure.UNREACHABLE),  # refuses this account in WeChat, not the number
        (45009, Failure.RETRY_LATER),
        (45011, Failure.RETRY_LATER),
        (45047, Failure.RETRY_LATER),
        (-1, Failure.RETRY_LATER),
        (40003, Failure.PERMANENT),
        (40037, Failure.PERMANENT),
        (47003, Failure.PERMANENT),
        (48001, Failure.PERMANENT),  # a code without a rule of its own is not retried forever
    ],
)
def test_send_errcodes_become_failures(store, code, failure):
    cached(store)
    transport, seen = mock(err(code))
    error = failure_of(channel(store, transport))
    assert (error.failure, error.code) == (failure, str(code))
    assert len(seen) == 1  # none of these is retried here


def test_minute_quota_asks_for_a_minute(store):
    cached(store)
    assert failure_of(channel(store, mock(err(45011))[0])).retry_after == 60.0
    assert failure_of(channel(store, mock(err(45009))[0])).retry_after is None


@pytest.mark.parametrize(
    ("answer", "failure", "code"),
    [
        (httpx.Response(500, text="busy"), Failure.RETRY_LATER, "500"),
        (httpx.Response(502, text="<html>bad gateway</html>"), Failure.RETRY_LATER, "502"),
        (httpx.Response(429, headers={"Retry-After": "7"}), Failure.RETRY_LATER, "429"),
        (httpx.Response(200, text="<html>portal</html>"), Failure.RETRY_LATER, "200"),
        (httpx.Response(404, text="<html>not found</html>"), Failure.PERMANENT, "404"),
        (httpx.ReadTimeout("timed out"), Failure.RETRY_LATER, "timeout"),
        (httpx.ConnectError("refused"), Failure.RETRY_LATER, "transport"),
    ],
)
def test_http_failures(store, answer, failure, code):
    cached(store)
    error = failure_of(channel(store, mock(answer)[0]))
    assert (error.failure, error.code) == (failure, code)
    assert error.retry_after == (7.0 if code == "429" else None)


# --- the access token ----------------------------------------------------------------------------


def test_no_cached_token_fetches_one_in_normal_mode_and_caches_it(store):
    transport, seen = mock(token_answer(), ok())
    channel(store, transport).send(MSG)
    assert seen[0].url.path == TOKEN_PATH
    assert json.loads(seen[0].content) == {
        "grant_type": "client_credential",
        "appid": APP_ID,
        "secret": APP_SECRET,
        "force_refresh": False,
    }
    assert seen[1].url.params["access_token"] == NEW_TOKEN
    got = store.get(APP_ID, NOW)
    assert got is not None and (got.value, got.expires_at, got.refreshed_at) == (NEW_TOKEN, NOW + 2 * H, NOW)


def test_a_token_within_five_minutes_of_expiry_is_fetched_again(store):
    store.put(APP_ID, OLD_TOKEN, NOW + 5 * M - S, NOW - 2 * H)
    transport, seen = mock(token_answer(), ok())
    channel(store, transport).send(MSG)
    assert [r.url.path for r in seen] == [TOKEN_PATH, SEND_PATH]
    assert json.loads(seen[0].content)["force_refresh"] is False


@pytest.mark.parametrize("code", [40001, 42001, 40014])
def test_a_refused_token_is_force_refreshed_once_and_the_message_sent(store, code):
    cached(store)
    transport, seen = mock(err(code), token_answer(), ok())
    assert channel(store, transport).send(MSG) == Sent("200228332")
    assert [r.url.path for r in seen] == [SEND_PATH, TOKEN_PATH, SEND_PATH]
    assert json.loads(seen[1].content)["force_refresh"] is True
    assert seen[2].url.params["access_token"] == NEW_TOKEN
    got = store.get(APP_ID, NOW)
    assert got is not None and got.value == NEW_TOKEN


def test_a_second_refusal_is_retry_later_not_a_loop(store):
    cached(store)
    transport, seen = mock(err(40001), token_answer(), err(40001))
    error = failure_of(channel(store, transport))
    assert (error.failure, error.code) == (Failure.RETRY_LATER, "40001")
    assert len(seen) == 3


def test_a_token_another_process_stored_is_used_instead_of_forcing(store):
    cached(store)
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.params.get("access_token") == OLD_TOKEN:
            store.put(APP_ID, NEW_TOKEN, NOW + 2 * H, NOW)  # meanwhile another process forced a refresh
            return err(40001)
        return ok()

    channel(store, httpx.MockTransport(handle)).send(MSG)
    assert [r.url.path for r in seen] == [SEND_PATH, SEND_PATH]
    assert seen[1].url.params["access_token"] == NEW_TOKEN


def test_no_force_within_30_s_of_the_last_fetch_or_claim(store):
    cached(store, fetched_ago=29 * S)
    transport, seen = mock(err(40001))
    error = failure_of(channel(store, transport))
    assert (error.failure, error.code) == (Failure.RETRY_LATER, "40001")
    assert [r.url.path for r in seen] == [SEND_PATH]


def test_a_failed_forced_refresh_is_not_forced_again_at_once(store):
    cached(store)
    transport, seen = mock(err(40001), err(-1, "system error"))
    assert failure_of(channel(store, transport)).failure == Failure.RETRY_LATER
    transport, seen = mock(err(40001))
    assert failure_of(channel(store, transport)).failure == Failure.RETRY_LATER
    assert [r.url.path for r in seen] == [SEND_PATH]  # the claim of the failed refresh holds for 30 s


@pytest.mark.parametrize(
    ("code", "failure", "fix"),
    [
        (40013, Failure.PERMANENT, "check app_id"),
        (40125, Failure.PERMANENT, "AppSecret is wrong"),
        (40164, Failure.PERMANENT, "add this server's IP to the account's IP whitelist"),
        (-1, Failure.RETRY_LATER, "could not issue"),
        (45009, Failure.RETRY_LATER, "could not issue"),
    ],
)
def test_stable_token_errors(store, code, failure, fix):
    transport, seen = mock(err(code, f"bad secret {APP_SECRET}"))
    error = failure_of(channel(store, transport))
    assert (error.failure, error.code) == (failure, str(code))
    assert fix in str(error) and APP_SECRET not in str(error)
    assert [r.url.path for r in seen] == [TOKEN_PATH] and store.get(APP_ID, NOW) is None


def test_the_token_is_in_no_error_text_or_repr(store):
    cached(store)
    echoing = err(47003, f"argument invalid for access_token={OLD_TOKEN}")
    for answer in (echoing, httpx.ReadTimeout(f"timeout on ?access_token={OLD_TOKEN}"), httpx.ConnectError(OLD_TOKEN)):
        error = failure_of(channel(store, mock(answer)[0]))
        assert OLD_TOKEN not in str(error) and OLD_TOKEN not in repr(error.args)
        # A logged traceback does not show the httpx error, whose request carries the URL.
        assert error.__context__ is None or error.__suppress_context__
    ch = channel(store, mock(ok())[0])
    assert APP_SECRET not in repr(ch) and OLD_TOKEN not in repr(store.get(APP_ID, NOW))
    assert OLD_TOKEN not in repr(CachedToken(OLD_TOKEN, NOW, NOW))


# --- problem(): what WeChat would refuse, at its limits ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "longest"),
    [
        ("thing1", "订" * 20),
        ("character_string2", "A" * 32),
        ("phrase3", "配送中配送"),
        ("number4", "1" * 32),
        ("letter5", "a" * 32),
        ("symbol6", "-" * 5),
        ("phone_number7", "1" * 17),
        ("car_number8", "粤A8Z888挂"),
        ("const9", "c" * 20),
        ("name10", "欧" * 10),
        ("name11", "a" * 20),
        ("amount12", "¥" + "9" * 10),
    ],
)
def test_keyword_limits_at_the_boundary(name, longest):
    assert keyword_problem(name, longest) is None
    one_more = longest + longest[-1]
    why = keyword_problem(name, one_more)
    assert why is not None and name in why and one_more not in why


@pytest.mark.parametrize(
    ("name", "value", "good"),
    [
        ("character_string1", "订单SO1", False),  # no Chinese in a character_string
        ("phrase1", "已发货1", False),  # Chinese only
        ("number1", "12.5", True),
        ("number1", "12a", False),
        ("time1", "15:01", True),
        ("time1", "2026年11月25日 15:01", True),
        ("time1", "明天上午", False),
        ("date1", "2026-11-25", True),
        ("amount1", "¥99.00", True),
        ("amount1", "99元", True),
        ("amount1", "九十九元", False),
        ("thing1", "", False),  # WeChat: "value is empty"
        ("thing1", "第一行\n第二行", False),
        ("first", "您好", False),  # no longer shown since 2023
        ("remark", "谢谢", False),
        ("keyword1", "老模板的值" * 10, True),  # a template from before the 类目模板: WeChat cuts it itself
    ],
)
def test_keyword_kinds(name, value, good):
    assert (keyword_problem(name, value) is None) == good


def test_missing_openid_is_unreachable_and_nothing_is_sent(store):
    cached(store)
    transport, seen = mock(ok())
    ch = channel(store, transport)
    no_openid = CustomerMessage("k", TEMPLATE, (("thing1", "已发货"),), phone="13812345678")
    assert "openid" in (ch.problem(no_openid) or "")
    assert failure_of(ch, no_openid).failure == Failure.UNREACHABLE
    no_template = CustomerMessage("k", "", (("thing1", "已发货"),), openid=OPENID)
    assert "template" in (ch.problem(no_template) or "")
    assert failure_of(ch, no_template).failure == Failure.PERMANENT
    too_long = CustomerMessage("k", TEMPLATE, (("thing1", "订" * 21),), openid=OPENID)
    assert failure_of(ch, too_long).failure == Failure.PERMANENT
    assert ch.problem(MSG) is None and seen == []


# --- the token store, on SQLite and PostgreSQL -------------------------------------------------------


def test_token_store(engine):
    store = TokenStore(engine)
    assert store.get(APP_ID, NOW) is None
    store.put(APP_ID, OLD_TOKEN, NOW + 2 * H, NOW)
    got = store.get(APP_ID, NOW)
    assert got is not None and got == CachedToken(OLD_TOKEN, NOW + 2 * H, NOW) and got.expires_at.tzinfo is not None
    assert store.get(APP_ID, NOW + 2 * H - 5 * M) is not None  # five minutes left: still used
    assert store.get(APP_ID, NOW + 2 * H - 5 * M + S) is None
    assert store.get(APP_ID, NOW + 2 * H - S, margin=0 * S) is not None
    store.put(APP_ID, NEW_TOKEN, NOW + 3 * H, NOW + H)
    assert store.get(APP_ID, NOW + H) == CachedToken(NEW_TOKEN, NOW + 3 * H, NOW + H)
    assert store.get("wx-other", NOW) is None


def test_token_store_claims_one_forced_refresh_at_a_time(engine):
    store = TokenStore(engine)
    assert store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW)  # nothing cached: nothing to protect
    store.put(APP_ID, OLD_TOKEN, NOW + 2 * H, NOW - H)
    assert store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW)
    assert not store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW)  # a second process, at the same moment
    assert not store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW + 30 * S - S)
    assert store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW + 30 * S)
    store.put(APP_ID, NEW_TOKEN, NOW + 3 * H, NOW - H)
    assert not store.claim_forced_refresh(APP_ID, OLD_TOKEN, NOW + H)  # already replaced: use the new one


# --- against the stand-in ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def sandbox(clock) -> WeChatSandbox:
    return WeChatSandbox(APP_ID, APP_SECRET, followers=[OPENID, "oFollower_0002"], templates=[TEMPLATE], clock=clock)


def test_two_channels_on_one_warehouse_share_one_token(wh_url, sandbox, clock):
    engines = [create_engine(wh_url), create_engine(wh_url)]  # as two processes would have
    try:
        a, b = (channel(TokenStore(e), httpx.MockTransport(handler(sandbox)), clock) for e in engines)
        for n in range(5):
            for ch in (a, b):
                ch.send(CustomerMessage(f"SO-{n}:{ch is a}", TEMPLATE, MSG.params, openid=OPENID))
                clock.advance(60)
    finally:
        for e in engines:
            e.dispose()
    assert sandbox.token_calls == 1 and len(sandbox.accepted) == 10


def test_the_stand_in_refuses_force_refreshes_past_twenty_a_day(store, sandbox, clock):
    sandbox.forced[clock().date()] = FORCE_PER_DAY
    cached(store, token="never-issued")
    error = failure_of(channel(store, httpx.MockTransport(handler(sandbox)), clock))
    assert (error.failure, error.code) == (Failure.RETRY_LATER, "45009")


def test_end_to_end_against_the_served_stand_in(store, sandbox, clock):
    """One channel over HTTP: a token per process while it lasts, one forced refresh when WeChat ends it early."""
    sandbox.refusing.add("oFollower_0002")
    with serve_app(app(sandbox)) as port:
        ch = WeChatTemplate(APP_ID, APP_SECRET, store, api=f"http://127.0.0.1:{port}", clock=clock)
        sent = [ch.send(MSG), ch.send(CustomerMessage("SO-2:link", TEMPLATE, MSG.params, openid=OPENID))]
        assert sandbox.token_calls == 1
        assert [a.msgid for a in sandbox.accepted] == [int(s.provider_id or 0) for s in sent]
        first = sandbox.accepted[0]
        assert (first.touser, first.template_id, first.url, first.client_msg_id) == (OPENID, TEMPLATE, MSG.url, MSG.key)
        assert first.data == dict(MSG.params)

        assert ch.send(MSG) == sent[0]  # the same client_msg_id within 10 minutes: WeChat sends it once
        assert len(sandbox.accepted) == 2

        clock.advance(2 * 3600)  # the token expired: a new one in normal mode
        ch.send(MSG)
        assert (sandbox.token_calls, sandbox.force_refreshes()) == (2, 0)

        clock.advance(600)
        sandbox.expire()  # WeChat ended the token before the cache says so: one forced refresh
        ch.send(CustomerMessage("SO-3:link", TEMPLATE, MSG.params, openid=OPENID))
        assert (sandbox.token_calls, sandbox.force_refreshes(), len(sandbox.accepted)) == (3, 1, 4)

        stranger = CustomerMessage("SO-4:link", TEMPLATE, MSG.params, openid="oStranger")
        assert failure_of(ch, stranger).failure == Failure.UNREACHABLE
        refusing = CustomerMessage("SO-5:link", TEMPLATE, MSG.params, openid="oFollower_0002")
        assert failure_of(ch, refusing).failure == Failure.UNREACHABLE
        unknown = CustomerMessage("SO-6:link", "tmpl-unknown", MSG.params, openid=OPENID)
        assert (failure_of(ch, unknown).failure, failure_of(ch, unknown).code) == (Failure.PERMANENT, "40037")

        sandbox.whitelisted = False
        store.put(APP_ID, "gone", NOW, NOW - 3 * H)  # nothing valid cached: a new process must fetch one
        other = WeChatTemplate(APP_ID, APP_SECRET, store, api=f"http://127.0.0.1:{port}", clock=clock)
        error = failure_of(other)
        assert error.failure == Failure.PERMANENT and "IP whitelist" in str(error)
        assert len(sandbox.accepted) == 4


def test_stand_in_refuses_what_wechat_refuses(sandbox):
    issued = sandbox.stable_token({"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET})
    token = issued["access_token"]
    assert sandbox.stable_token({"grant_type": "client_credential", "appid": APP_ID, "secret": "x"})["errcode"] == 40125
    assert sandbox.stable_token({"grant_type": "client_credential", "appid": "wx", "secret": APP_SECRET})[
        "errcode"
    ] == (40013)
    body = {"touser": OPENID, "template_id": TEMPLATE, "data": {"thing1": {"value": "订" * 21}}}
    assert sandbox.template_send(token, body)["errcode"] == 47003
    assert sandbox.template_send("unknown", body)["errcode"] == 40001
    body["data"] = {"first": {"value": "dropped"}, "thing1": {"value": "已发货"}}
    assert sandbox.template_send(token, body)["errcode"] == 0
    assert sandbox.accepted[-1].data == {"thing1": "已发货"}
    forced = sandbox.stable_token(
        {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET, "force_refresh": True}
    )
    assert forced["access_token"] != token and sandbox.template_send(token, body)["errcode"] == 40001
    assert sandbox.stable_token({"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}) == {
        "access_token": forced["access_token"],
        "expires_in": 7200,
    }


def test_a_channel_reads_the_shared_token_once_and_keeps_it_while_it_lasts(store, sandbox, clock, monkeypatch):
    reads = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda *a, **k: reads.append(1) or real_get(*a, **k))
    ch = channel(store, httpx.MockTransport(handler(sandbox)), clock)
    for i in range(5):
        ch.send(CustomerMessage(f"SO-{i}:link", TEMPLATE, MSG.params, openid=OPENID))
    assert (sandbox.token_calls, len(reads), len(sandbox.accepted)) == (1, 1, 5)
    clock.advance(2 * 3600 - 4 * 60)  # within five minutes of its expiry: read (and fetched) again
    ch.send(CustomerMessage("SO-9:link", TEMPLATE, MSG.params, openid=OPENID))
    assert (sandbox.token_calls, len(reads)) == (2, 2)
