"""A stand-in for the WeChat Official Account API: POST cgi-bin/stable_token and cgi-bin/message/template/send.

It knows one account (AppID and AppSecret), its followers and its templates, and answers the way
WeChat does: stable_token gives the same token in normal mode while it stays valid for more than
five minutes and a new one on force_refresh, which invalidates the old ones and is refused past 20
a day (45009); template/send refuses an unknown or superseded token (40001), an expired one (42001),
a customer who does not follow (43004) or refuses the account's messages (43101), an unknown
template (40037) and a keyword value its type does not take (47003). Accepted messages are kept in
memory for tests to read. Time comes from the injected clock; `expire` ends the tokens' validity.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from order_pipeline.notify.channels.wechat import RETIRED_KEYWORDS, SEND_PATH, TOKEN_PATH, keyword_problem

TOKEN_TTL = 7200  # seconds
RENEW_BEFORE = timedelta(minutes=5)  # normal mode hands out a new token this long before the old one expires
FORCE_PER_DAY = 20
CLIENT_MSG_TTL = timedelta(minutes=10)  # the same openid + client_msg_id is sent once within it
CHINA = ZoneInfo("Asia/Shanghai")  # WeChat's days

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _error(code: int, message: str) -> dict[str, Any]:
    return {"errcode": code, "errmsg": f"{message} rid: sandbox-{secrets.token_hex(4)}"}


@dataclass(frozen=True)
class Accepted:
    msgid: int
    touser: str
    template_id: str
    url: str | None
    data: dict[str, str]  # keyword → value
    client_msg_id: str | None
    at: datetime


class WeChatSandbox:
    """The account's state: tokens, force refreshes, accepted messages. Thread-safe: a served app
    answers in uvicorn's thread while the test reads."""

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        followers: Iterable[str] = (),
        templates: Iterable[str] = (),
        refusing: Iterable[str] = (),
        clock: Clock = _utc_now,
    ):
        self.app_id, self.app_secret, self.clock = app_id, app_secret, clock
        self.followers, self.templates, self.refusing = set(followers), set(templates), set(refusing)
        self.whitelisted = True  # False: stable_token answers 40164, as for a server outside the IP whitelist
        self.tokens: dict[str, datetime] = {}  # valid token → when it expires
        self.current: str | None = None
        self.token_calls = 0
        self.forced: dict[date, int] = {}  # China day → force refreshes granted
        self.accepted: list[Accepted] = []
        self._by_client_id: dict[tuple[str, str], Accepted] = {}  # (openid, client_msg_id): the newest accepted
        self._lock = threading.Lock()
        self._next_msgid = 3_000_000_001
        self._issued = 0

    # --- for tests --------------------------------------------------------------------------------

    def expire(self) -> None:
        """Every token issued so far expires now."""
        with self._lock:
            now = self.clock()
            self.tokens = {t: min(at, now) for t, at in self.tokens.items()}

    def force_refreshes(self, day: date | None = None) -> int:
        return self.forced.get(day or self.clock().astimezone(CHINA).date(), 0)

    # --- stable_token -----------------------------------------------------------------------------

    def stable_token(self, body: Any) -> dict[str, Any]:
        with self._lock:
            self.token_calls += 1
            if not isinstance(body, dict) or body.get("grant_type") != "client_credential":
                return _error(40002, "invalid grant_type")
            if body.get("appid") != self.app_id:
                return _error(40013, "invalid appid")
            if body.get("secret") != self.app_secret:
                return _error(40125, "invalid appsecret")
            if not self.whitelisted:
                return _error(40164, "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist")
            now = self.clock()
            if body.get("force_refresh") is True:
                day = now.astimezone(CHINA).date()
                if self.forced.get(day, 0) >= FORCE_PER_DAY:
                    return _error(45009, "reach max api daily quota limit")
                self.forced[day] = self.forced.get(day, 0) + 1
                self.tokens.clear()  # a forced refresh invalidates every earlier token
                return self._issue(now)
            if self.current is not None and self.tokens.get(self.current, now) - now > RENEW_BEFORE:
                left = int((self.tokens[self.current] - now).total_seconds())
                return {"access_token": self.current, "expires_in": left}
            return self._issue(now)  # the previous token stays valid until its own expiry

    def _issue(self, now: datetime) -> dict[str, Any]:
        self._issued += 1
        token = f"sandbox_{self._issued}_{secrets.token_urlsafe(24)}"
        self.tokens[token] = now + timedelta(seconds=TOKEN_TTL)
        self.current = token
        return {"access_token": token, "expires_in": TOKEN_TTL}

    # --- template/send ----------------------------------------------------------------------------

    def template_send(self, token: str | None, body: Any) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            if token is None or token not in self.tokens:
                return _error(40001, "invalid credential, access_token is invalid or not latest")
            if self.tokens[token] <= now:
                return _error(42001, "access_token expired")
            if not isinstance(body, dict) or not isinstance(body.get("data", {}), dict):
                return _error(47001, "data format error")
            touser, template_id = body.get("touser"), body.get("template_id")
            if not isinstance(touser, str) or not touser:
                return _error(40003, "invalid openid")
            if template_id not in self.templates:
                return _error(40037, "invalid template_id")
            if touser not in self.followers:
                return _error(43004, "require subscribe")
            if touser in self.refusing:
                return _error(43101, "user refuse to accept the msg")
            data = self._values(body.get("data", {}))
            if isinstance(data, str):
                return _error(47003, f"argument invalid! data.{data}.value invalid")
            client_msg_id = body.get("client_msg_id")
            earlier = self._duplicate(touser, client_msg_id, now)
            if earlier is not None:
                return {"errcode": 0, "errmsg": "ok", "msgid": earlier.msgid}
            msgid, self._next_msgid = self._next_msgid, self._next_msgid + 1
            url = body.get("url")
            accepted = Accepted(
                msgid, touser, str(template_id), url if isinstance(url, str) else None, data, client_msg_id, now
            )
            self.accepted.append(accepted)
            if client_msg_id:
                self._by_client_id[(touser, str(client_msg_id))] = accepted
            return {"errcode": 0, "errmsg": "ok", "msgid": msgid}

    @staticmethod
    def _values(data: dict[str, Any]) -> dict[str, str] | str:
        """The keyword values, or the name of the first one WeChat would refuse. `first` and `remark`
        are dropped without a word, as WeChat does since 2023."""
        values = {}
        for name, item in data.items():
            if name in RETIRED_KEYWORDS:
                continue
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, str) or keyword_problem(name, value) is not None:
                return name
            values[name] = value
        return values

    def _duplicate(self, touser: str, client_msg_id: Any, now: datetime) -> Accepted | None:
        if not client_msg_id:
            return None
        earlier = self._by_client_id.get((touser, str(client_msg_id)))
        return earlier if earlier is not None and now - earlier.at < CLIENT_MSG_TTL else None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def handler(sandbox: WeChatSandbox) -> Callable[[httpx.Request], httpx.Response]:
    """A handler for `httpx.MockTransport` that answers in-process."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return httpx.Response(404)
        if request.url.path == TOKEN_PATH:
            return httpx.Response(200, json=sandbox.stable_token(_json(request.content)))
        if request.url.path == SEND_PATH:
            token = request.url.params.get("access_token")
            return httpx.Response(200, json=sandbox.template_send(token, _json(request.content)))
        return httpx.Response(404)

    return handle


def app(sandbox: WeChatSandbox) -> Starlette:
    """The stand-in as a web app, for serving on loopback; `app.state.wechat` is `sandbox`."""

    async def stable_token(request: Request) -> JSONResponse:
        return JSONResponse(sandbox.stable_token(_json(await request.body())))

    async def template_send(request: Request) -> JSONResponse:
        token = request.query_params.get("access_token")
        return JSONResponse(sandbox.template_send(token, _json(await request.body())))

    web = Starlette(
        routes=[Route(TOKEN_PATH, stable_token, methods=["POST"]), Route(SEND_PATH, template_send, methods=["POST"])]
    )
    web.state.wechat = sandbox
    return web
