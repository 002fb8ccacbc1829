"""The `notifications:` section: which events message the customer, through which channels, when.

    notifications:
      quiet_hours: "21:00-08:00"     # business time; a message due in them waits for their end. `off`: any hour
      daily_cap: 3                   # messages per number per business day; more wait for the next morning
      retry_for: 24h                 # a message that cannot go out for this long is given up, and recorded
      renew_link_before: 1d          # an open order whose last link expires this soon gets a fresh one
      max_failure_rate: 0.05         # the asset check fails above this share of failed messages in a run
      phone_hash_key_env: ORDER_PIPELINE_PHONE_HASH_KEY   # optional; else derived from the link secret
      link_url: https://track.example.com/order/{order_no}  # optional; default {web.base_url}/order/{order_no}
      send: [wechat, sms]            # the channels tried in turn, for every event that names none
      channels:
        wechat: {type: wechat, app_id: wx1234567890abcdef, app_secret_env: WECHAT_APP_SECRET}
        sms: {type: aliyun_sms, access_key_id_env: ALIBABA_CLOUD_ACCESS_KEY_ID,
              access_key_secret_env: ALIBABA_CLOUD_ACCESS_KEY_SECRET, sign_name: 示例商城}
      events:
        order_created:
          max_age: 24h               # an order older than this at first sight is not news
          templates:
            wechat: {id: TEMPLATE_ID, params: {character_string1: "{order_no}", thing2: "{stage}"}}
            sms: {id: SMS_123456789, params: {order: "{order_no}", code: "{link_code}"}}
        shipped: off

Every event listed is on (`off` turns one off); events not listed are off. A real channel needs a
template per event it carries; the outbox takes the event name and every field. Mistakes fail at
load naming `notifications.<entry>` and the fix; secrets are read only when a channel is built.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta

from order_pipeline.contract.config import Config
from order_pipeline.contract.parsing import SectionParser
from order_pipeline.notify.events import EVENTS

CHANNEL_KINDS = ("aliyun_sms", "tencent_sms", "wechat", "outbox")
# What a template parameter may say: "{order_no}", "订单{order_no}已发货", ...
FIELDS: dict[str, str] = {
    "order_no": "the order number",
    "link": "the signed tracking link (WeChat's `url` gets it anyway; too long for an SMS variable)",
    "link_code": "the short link's code: put https://your-host/s/ in the template text and this after it",
    "stage": "the order's stage, as the page names it (配送中)",
    "event": "what happened, in a few words (已发货)",
    "carrier": "the carrier's name (顺丰速运)",
    "waybill": "the waybill number of the newest parcel",
    "reason": "why the parcel is in trouble, in the customer's words",
    "eta": "the expected delivery date (12月05日)",
    "promised_date": "the promised delivery date (12月04日)",
    "time": "when the message is sent (12-04 09:30)",
}
SECTION_FIELDS = {
    "quiet_hours",
    "daily_cap",
    "retry_for",
    "renew_link_before",
    "max_failure_rate",
    "phone_hash_key_env",
    "link_url",
    "send",
    "channels",
    "events",
}
EVENT_FIELDS = {"max_age", "send", "templates"}
TEMPLATE_FIELDS = {"id", "params"}
CHANNEL_FIELDS: dict[str, set[str]] = {
    "aliyun_sms": {"type", "access_key_id_env", "access_key_secret_env", "sign_name", "endpoint", "timeout"},
    "tencent_sms": {
        "type",
        "secret_id_env",
        "secret_key_env",
        "sdk_app_id",
        "sign_name",
        "region",
        "endpoint",
        "timeout",
        "variable_max",
    },
    "wechat": {"type", "app_id", "app_secret_env", "api", "timeout"},
    "outbox": {"type"},
}
# The settings a channel cannot do without, with an example for the fix.
REQUIRED: dict[str, dict[str, str]] = {
    "aliyun_sms": {
        "access_key_id_env": "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "access_key_secret_env": "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "sign_name": "示例商城",
    },
    "tencent_sms": {
        "secret_id_env": "TENCENTCLOUD_SECRET_ID",
        "secret_key_env": "TENCENTCLOUD_SECRET_KEY",
        "sdk_app_id": "1400000000",
        "sign_name": "示例商城",
    },
    "wechat": {"app_id": "wx1234567890abcdef", "app_secret_env": "WECHAT_APP_SECRET"},
    "outbox": {},
}
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Template:
    id: str  # Aliyun TemplateCode, Tencent TemplateId, WeChat template_id; the outbox: the event
    params: tuple[tuple[str, str], ...]  # (parameter name, text with {field}s), in the template's order


@dataclass(frozen=True)
class EventSettings:
    name: str
    max_age: timedelta
    send: tuple[str, ...]  # channel names, tried in turn
    templates: Mapping[str, Template]  # by channel name


@dataclass(frozen=True)
class NotifySettings:
    channels: Mapping[str, dict]  # name -> the entry, as written (built by notify.channels.config)
    events: Mapping[str, EventSettings]  # the events that are on
    quiet_hours: tuple[time, time] | None = (time(21), time(8))
    daily_cap: int = 3
    retry_for: timedelta = timedelta(hours=24)
    renew_link_before: timedelta = timedelta(days=1)
    max_failure_rate: float = 0.05
    phone_hash_key_env: str | None = None
    link_url: str | None = None
    timezone: str = "Asia/Shanghai"
    resend: EventSettings | None = field(default=None)  # how a staff resend goes: order_created's way

    @property
    def enabled(self) -> bool:
        return bool(self.events)


def load_notify_settings(config: Config) -> NotifySettings:
    """The `notifications:` section of `config`; no section: nothing is sent. Raises ConfigError."""
    return _Parser(config).parse(config.sections.get("notifications"))


class _Parser(SectionParser):
    prefix = "notifications"

    def __init__(self, config: Config):
        super().__init__(config.path)
        self.config = config

    def parse(self, value) -> NotifySettings:
        if value in (None, False, "off"):
            return NotifySettings({}, {}, timezone=self.config.timezone)
        doc = self.mapping(value, "notifications", SECTION_FIELDS)
        d = NotifySettings({}, {})
        channels = self.channels(doc.get("channels"))
        default_send = self.send(doc.get("send"), "send", channels, tuple(channels))
        events = self.events(doc.get("events"), channels, default_send)
        key_env = doc.get("phone_hash_key_env")
        link_url = doc.get("link_url")
        if link_url is not None and (
            not isinstance(link_url, str) or "{order_no}" not in link_url or not link_url.startswith("http")
        ):
            self.fail(
                "link_url",
                f"{link_url!r} is not an http(s) URL with {{order_no}} in it",
                "write e.g. https://track.example.com/order/{order_no}",
            )
        first = events.get("order_created") or next(iter(events.values()), None)
        return NotifySettings(
            channels,
            events,
            quiet_hours=self.quiet_hours(doc.get("quiet_hours", "21:00-08:00")),
            daily_cap=self.count(doc.get("daily_cap", d.daily_cap), "daily_cap"),
            retry_for=self.duration(doc.get("retry_for", "24h"), "retry_for"),
            renew_link_before=self.duration(doc.get("renew_link_before", "1d"), "renew_link_before"),
            max_failure_rate=self.rate(doc.get("max_failure_rate", d.max_failure_rate)),
            phone_hash_key_env=None if key_env is None else self.env_name(key_env, "phone_hash_key_env", "PHONE_KEY"),
            link_url=link_url,
            timezone=self.config.timezone,
            resend=None if first is None else EventSettings("resend", timedelta(days=365), first.send, first.templates),
        )

    def quiet_hours(self, value) -> tuple[time, time] | None:
        if value in (False, "off", None):
            return None
        text = str(value).replace(" ", "")
        start, dash, end = text.partition("-")
        m1, m2 = _CLOCK.fullmatch(start), _CLOCK.fullmatch(end)
        if not dash or not m1 or not m2 or start == end:
            self.fail("quiet_hours", f"{value!r} is not a window of two clock times", 'write e.g. "21:00-08:00" or off')
        assert m1 is not None and m2 is not None
        return time(int(m1[1]), int(m1[2])), time(int(m2[1]), int(m2[2]))

    def count(self, value, entry: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(entry, f"{value!r} is not a whole number of at least 1", f"write e.g. `{entry}: 3`")
        return value

    def rate(self, value) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            self.fail("max_failure_rate", f"{value!r} is not a share between 0 and 1", "write e.g. 0.05 (5 %)")
        return float(value)

    def channels(self, value) -> dict[str, dict]:
        specs = value or {}
        if not isinstance(specs, dict) or not specs:
            self.fail("channels", "no channel is configured", "add e.g. `channels: {outbox: {type: outbox}}`")
        out = {}
        for name, spec in specs.items():
            entry = f"channels.{name}"
            if not isinstance(spec, dict) or spec.get("type") not in CHANNEL_KINDS:
                kind = spec.get("type") if isinstance(spec, dict) else spec
                self.fail(
                    f"{entry}.type", f"{kind!r} is not a customer channel", f"use one of: {', '.join(CHANNEL_KINDS)}"
                )
            kind = spec["type"]
            self.mapping(spec, entry, CHANNEL_FIELDS[kind])
            for setting, example in REQUIRED[kind].items():
                if not spec.get(setting):
                    self.fail(f"{entry}.{setting}", "missing", f"write `{setting}: {example}`")
                if setting.endswith("_env"):
                    self.env_name(spec[setting], f"{entry}.{setting}", example)
            if "timeout" in spec:
                self.duration(spec["timeout"], f"{entry}.timeout")
            limit = spec.get("variable_max", 0)
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
                self.fail(f"{entry}.variable_max", f"{limit!r} is not a number of characters", "write 12, or null")
            out[str(name)] = dict(spec)
        return out

    def send(self, value, entry: str, channels: Mapping[str, dict], default: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return default
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            self.fail(entry, f"{value!r} is not a list of channels", "write e.g. `send: [wechat, sms]`")
        for name in names:
            if name not in channels:
                self.fail(entry, f"unknown channel {name!r}", f"use one of: {', '.join(channels)}")
        return tuple(names)

    def events(self, value, channels: Mapping[str, dict], default_send: tuple[str, ...]) -> dict[str, EventSettings]:
        specs = self.mapping(value, "events", set(EVENTS))
        out = {}
        for name, spec in specs.items():
            if spec in (False, "off"):
                continue
            entry = f"events.{name}"
            spec = self.mapping({} if spec in (None, True, "on") else spec, entry, EVENT_FIELDS)
            send = self.send(spec.get("send"), f"{entry}.send", channels, default_send)
            templates = self.mapping(spec.get("templates"), f"{entry}.templates", set(channels))
            parsed = {}
            for channel in send:
                kind = channels[channel]["type"]
                tmpl = templates.get(channel)
                if tmpl is None and kind != "outbox":
                    self.fail(
                        f"{entry}.templates.{channel}",
                        f"missing: {kind} sends only a registered template",
                        f'write `{channel}: {{id: YOUR_TEMPLATE_ID, params: {{order: "{{order_no}}"}}}}`',
                    )
                parsed[channel] = (
                    self.template(tmpl, f"{entry}.templates.{channel}") if tmpl is not None else _outbox_template(name)
                )
            out[name] = EventSettings(name, self.duration(spec.get("max_age", "24h"), f"{entry}.max_age"), send, parsed)
        return out

    def template(self, value, entry: str) -> Template:
        spec = self.mapping(value, entry, TEMPLATE_FIELDS)
        if not spec.get("id"):
            self.fail(f"{entry}.id", "missing", "write the template's id as the vendor's console shows it")
        params = self.mapping(spec.get("params"), f"{entry}.params", set(spec.get("params") or {}))
        for pname, text in params.items():
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(str(text)) if f is not None]
            except ValueError:
                self.fail(f"{entry}.params.{pname}", f"{text!r} has an unmatched brace", "write fields as {order_no}")
            for fname in names:
                if fname not in FIELDS:
                    self.fail(
                        f"{entry}.params.{pname}", f"unknown field {{{fname}}}", f"use one of: {', '.join(FIELDS)}"
                    )
        return Template(str(spec["id"]), tuple((str(k), str(v)) for k, v in params.items()))


def _outbox_template(event: str) -> Template:
    """What the outbox writes when no template is given: the event's name and every field."""
    return Template(event, tuple((name, "{" + name + "}") for name in FIELDS))
