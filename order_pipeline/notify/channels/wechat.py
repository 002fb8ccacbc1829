"""WeChat Official Account (服务号) template messages: POST cgi-bin/message/template/send.

The message goes to the customer's openid under the company's account, filled from a 类目模板
whose keywords are named by type and position (`thing1`, `character_string2`, `time3`); each type
has WeChat's own limit on its value, checked by `problem()` before anything is sent. Since May
2023 WeChat no longer shows `first` and `remark`, so a template naming them is reported too.

The access token comes from stable_token and is cached in the warehouse (`TokenStore`), shared by
every process; a refusal of it (40001, 42001, 40014) refreshes it once and the message is tried
once more. The token sits in the request's query string: no error text here is built from a URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from order_pipeline.domain.http_retry import retry_after
from order_pipeline.notify.channels.message import CustomerMessage, Failure, SendError, Sent, exchange
from order_pipeline.notify.channels.wechat_tokens import MARGIN, CachedToken, TokenStore

DEFAULT_API = "https://api.weixin.qq.com"
DEFAULT_TIMEOUT = 10.0
TOKEN_PATH = "/cgi-bin/stable_token"
SEND_PATH = "/cgi-bin/message/template/send"

Clock = Callable[[], datetime]

# --- keyword values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeywordType:
    max_chars: int | None  # WeChat's limit on the value's length; None: it limits the form only
    pattern: re.Pattern[str] | None  # what the whole value may consist of
    meaning: str  # how WeChat describes what it takes

    def problem(self, name: str, value: str) -> str | None:
        if not value.strip():
            return f"{name} is empty: WeChat refuses an empty keyword (47003)"
        if any(ord(ch) < 0x20 for ch in value):
            return f"{name} has a line break or control character, which WeChat refuses"
        if self.max_chars is not None and len(value) > self.max_chars:
            return f"{name} is {len(value)} characters, over WeChat's {self.max_chars} ({self.meaning})"
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return f"{name} is not {self.meaning}, as WeChat requires of its type"
        return None


_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"

# The 类目模板 value limits (参数值内容限制) of the template and subscription message documentation.
KEYWORD_TYPES: dict[str, KeywordType] = {
    "thing": KeywordType(20, None, "at most 20 characters of any kind"),
    "character_string": KeywordType(32, re.compile(r"[\x20-\x7e]+"), "at most 32 digits, letters or symbols"),
    "number": KeywordType(32, re.compile(r"\d+(\.\d+)?"), "at most 32 digits, a decimal point allowed"),
    "letter": KeywordType(32, re.compile(r"[A-Za-z]+"), "at most 32 letters"),
    "symbol": KeywordType(5, re.compile(r"[^\w\s]+"), "at most 5 symbols"),
    "phrase": KeywordType(5, re.compile(f"[{_HAN}]+"), "at most 5 Chinese characters and nothing else"),
    "phone_number": KeywordType(17, re.compile(r"[\d\s+\-()#*]+"), "at most 17 digits and symbols"),
    "car_number": KeywordType(8, None, "a plate number of at most 8 characters"),
    "const": KeywordType(20, None, "one of the template's approved values, at most 20 characters"),
    "time": KeywordType(None, re.compile(r".*\d{1,2}:\d{2}.*"), "a 24-hour time such as 15:01 or 2026年11月25日 15:01"),
    "date": KeywordType(None, re.compile(r".*\d.*"), "a date such as 2026年11月25日 or 2026-11-25"),
    "amount": KeywordType(
        None,
        re.compile(r"[^\d\s.]?\d{1,10}(\.\d+)?元?"),
        "a currency sign and at most 10 digits, a decimal point and a trailing 元 allowed",
    ),
}
NAME_CHARS_HAN, NAME_CHARS_LATIN = 10, 20  # name: 10 Chinese characters, or 20 letters when there are none
RETIRED_KEYWORDS = ("first", "remark")  # no longer shown since 2023-05-04
_KEYWORD = re.compile(r"([a-z_]+?)(\d+)")
_HAN_CHAR = re.compile(f"[{_HAN}]")


def keyword_type(name: str) -> str | None:
    """The keyword's type, from its name as WeChat gives it (`thing1` → thing); None for other names."""
    found = _KEYWORD.fullmatch(name)
    if found is None:
        return None
    kind = found.group(1)
    return kind if kind in KEYWORD_TYPES or kind == "name" else None


def keyword_problem(name: str, value: str) -> str | None:
    """Why WeChat would refuse `value` for the keyword `name`; None when it takes it. The text never
    carries the value (a customer's name or address may be in it)."""
    if name in RETIRED_KEYWORDS:
        return f"{name} is no longer shown by WeChat (since May 2023): move its text into a keyword"
    kind = keyword_type(name)
    if kind is None:
        return None  # a template from before the 类目模板 (keyword1 …): WeChat cuts long values itself
    if kind == "name":
        limit = NAME_CHARS_HAN if _HAN_CHAR.search(value) else NAME_CHARS_LATIN
        return KeywordType(limit, None, f"a name of at most {limit} characters").problem(name, value)
    return KEYWORD_TYPES[kind].problem(name, value)


# --- answers -------------------------------------------------------------------------------------

TOKEN_REFUSED = {40001, 40014, 42001}  # invalid credential, invalid access_token, access_token expired
RETRY_CODES = {-1, 45009, 45011, 45047}  # system busy; daily quota, minute quota, send limit
MINUTE_QUOTA = 45011
PERMANENT_HINTS = {
    40003: "the openid is not one of this account's users",
    40036: "the template_id is malformed",
    40037: "the template_id is not one of this account's templates",
    47003: "a keyword value is invalid for its type",
}
TOKEN_FIXES = {
    40013: "WeChat does not know this AppID: check app_id (mp.weixin.qq.com, 设置与开发 → 基本配置)",
    40125: "the AppSecret is wrong: copy or reset it at mp.weixin.qq.com, 设置与开发 → 基本配置",
    40164: "add this server's IP to the account's IP whitelist (mp.weixin.qq.com, 设置与开发 → 基本配置 → IP白名单)",
}


@dataclass(frozen=True)
class _Token:
    value: str
    expires_in: float


class WeChatTemplate:
    """A customer channel over WeChat Official Account template messages."""

    kind = "wechat"

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        tokens: TokenStore,
        *,
        name: str = "wechat",
        api: str = DEFAULT_API,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ):
        self.name, self.app_id, self.tokens = name, app_id, tokens
        self._secret = app_secret
        self._api = api.rstrip("/")
        self._clock = clock
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._held: CachedToken | None = None

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"WeChatTemplate(name={self.name!r}, app_id={self.app_id!r})"

    def problem(self, msg: CustomerMessage) -> str | None:
        if not msg.openid:
            return "no openid: the customer is not known as a follower of the Official Account"
        if not msg.template:
            return "no template_id for the WeChat message"
        for name, value in msg.params:
            why = keyword_problem(name, value)
            if why is not None:
                return why
        return None

    def send(self, msg: CustomerMessage) -> Sent:
        why = self.problem(msg)
        if why is not None:
            failure = Failure.UNREACHABLE if not msg.openid else Failure.PERMANENT
            raise SendError(why, failure=failure, code="invalid")
        payload: dict[str, Any] = {
            "touser": msg.openid,
            "template_id": msg.template,
            "data": {name: {"value": value} for name, value in msg.params},
            # WeChat sends one message per openid and client_msg_id within 10 minutes: a retry after a
            # lost answer does not reach the customer twice.
            "client_msg_id": msg.key,
        }
        if msg.url:
            payload["url"] = msg.url
        now = self._clock()
        token = self._token(now)
        answer = self._post(SEND_PATH, payload, token)
        if answer.get("errcode") in TOKEN_REFUSED:
            token = self._replacement(token, now, answer)
            answer = self._post(SEND_PATH, payload, token)
            if answer.get("errcode") in TOKEN_REFUSED:
                raise self._error(answer, Failure.RETRY_LATER, "refused a freshly refreshed access token", token)
        return self._outcome(answer, token)

    # --- the token ------------------------------------------------------------------------------

    def _token(self, now: datetime) -> str:
        # The token last read or fetched is used while it stays valid: a token another process
        # force-refreshed meanwhile is refused once (40001), and `_replacement` reads the store then.
        held = self._held
        if held is not None and held.expires_at - now >= MARGIN:
            return held.value
        cached = self.tokens.get(self.app_id, now)
        if cached is not None:
            self._held = cached
            return cached.value
        return self._fetch(now, force=False)

    def _replacement(self, stale: str, now: datetime, refusal: dict[str, Any]) -> str:
        """A token to try instead of `stale`, which WeChat refused: one another process stored since,
        else a forced refresh, if this process wins the claim to it."""
        self._held = None
        cached = self.tokens.get(self.app_id, now, margin=timedelta(0))
        if cached is not None and cached.value != stale:
            self._held = cached
            return cached.value
        if not self.tokens.claim_forced_refresh(self.app_id, stale, now):
            raise self._error(
                refusal, Failure.RETRY_LATER, "refused the access token, which another process is refreshing", stale
            )
        return self._fetch(now, force=True)

    def _fetch(self, now: datetime, force: bool) -> str:
        body = {"grant_type": "client_credential", "appid": self.app_id, "secret": self._secret}
        answer = self._post(TOKEN_PATH, {**body, "force_refresh": force}, None)
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise self._token_error(answer)
        expires_at = now + timedelta(seconds=expires_in)
        self.tokens.put(self.app_id, token, expires_at, now)
        self._held = CachedToken(token, expires_at, now)
        return token

    def _token_error(self, answer: dict[str, Any]) -> SendError:
        code = answer.get("errcode")
        if code in (-1, 45009):
            return self._error(answer, Failure.RETRY_LATER, "could not issue an access token now", None)
        fix = TOKEN_FIXES.get(code) if isinstance(code, int) else None
        return self._error(answer, Failure.PERMANENT, f"refused to issue an access token: {fix or 'see errmsg'}", None)

    # --- HTTP -----------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        """WeChat's JSON answer to one POST. Failures worth another round become RETRY_LATER; texts
        name the path, never the URL, which carries the token."""
        params = {"access_token": token} if token else None
        request = httpx.Request("POST", self._api + path, params=params, json=body)
        resp = exchange(f"WeChat {path}", self._http, request)
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise SendError(
                f"WeChat {path}: HTTP {resp.status_code}",
                failure=Failure.RETRY_LATER,
                code=str(resp.status_code),
                retry_after=retry_after(resp),
            )
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            # WeChat answers JSON, even to errors: anything else came from something in between.
            failure = Failure.RETRY_LATER if resp.is_success else Failure.PERMANENT
            raise SendError(
                f"WeChat {path}: HTTP {resp.status_code} without a JSON answer; check the api address",
                failure=failure,
                code=str(resp.status_code),
            )
        return doc

    def _outcome(self, answer: dict[str, Any], token: str) -> Sent:
        code = answer.get("errcode", 0)
        if code == 0:
            msgid = answer.get("msgid")
            return Sent(None if msgid is None else str(msgid))
        if code == 43004:
            raise self._error(answer, Failure.UNREACHABLE, "the customer does not follow the account", token)
        if code == 43101:
            # The follower set the account's messages to refused (拒收) in WeChat. That refuses this
            # account in WeChat only, not the number: another channel (SMS) may still reach them.
            raise self._error(answer, Failure.UNREACHABLE, "the customer refuses the account's messages", token)
        if code in RETRY_CODES:
            failure = self._error(answer, Failure.RETRY_LATER, "asked to try later", token)
            failure.retry_after = 60.0 if code == MINUTE_QUOTA else None
            raise failure
        hint = PERMANENT_HINTS.get(code, "refused the message") if isinstance(code, int) else "refused the message"
        raise self._error(answer, Failure.PERMANENT, hint, token)

    def _error(self, answer: dict[str, Any], failure: Failure, what: str, token: str | None) -> SendError:
        code = answer.get("errcode")
        errmsg = str(answer.get("errmsg", ""))[:200]
        for secret in (token, self._secret):
            if secret:
                errmsg = errmsg.replace(secret, "***")
        return SendError(f"WeChat {what} (errcode {code}: {errmsg})", failure=failure, code=str(code))
