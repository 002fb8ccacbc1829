"""Channels built from `channels:` entries, and the mistakes they refuse: each names the file, the entry and the fix."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from order_pipeline.alerts.channels.config import build_channel
from order_pipeline.alerts.channels.dingtalk import DingTalkRobot
from order_pipeline.alerts.channels.email import EmailChannel
from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.alerts.channels.webhook import JsonWebhook
from order_pipeline.alerts.channels.wecom import WeComRobot
from order_pipeline.contract.config import ConfigError

# --- configuration -------------------------------------------------------------------------------

CONFIG = "/etc/order_pipeline.yaml"


def test_build_channels(monkeypatch):
    monkeypatch.setenv("WECOM_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
    monkeypatch.setenv("DING_URL", "https://oapi.dingtalk.com/robot/send?access_token=t")
    monkeypatch.setenv("DING_SECRET", "SEC1")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    engine = sa.create_engine("sqlite://")
    wecom = build_channel(
        "warehouse",
        {"type": "wecom", "webhook_url_env": "WECOM_URL", "mentions": [13800000000, "zhangsan"], "timeout": "5s"},
        engine,
        CONFIG,
    )
    assert isinstance(wecom, WeComRobot)
    assert (wecom.name, wecom.mentions, wecom._http.timeout) == ("warehouse", ("13800000000", "zhangsan"), 5.0)
    ding = build_channel(
        "ops", {"type": "dingtalk", "webhook_url_env": "DING_URL", "secret_env": "DING_SECRET"}, engine, CONFIG
    )
    assert isinstance(ding, DingTalkRobot) and ding._secret == "SEC1"
    hook = build_channel("bi", {"type": "webhook", "url": "https://bi.example.com/hook"}, engine, CONFIG)
    assert isinstance(hook, JsonWebhook)
    mail = build_channel(
        "mail",
        {
            "type": "email",
            "host": "smtp.example.com",
            "sender": "a@example.com",
            "recipients": ["b@example.com"],
            "username": "a",
            "password_env": "SMTP_PASSWORD",
            "ssl": True,
        },
        engine,
        CONFIG,
    )
    assert isinstance(mail, EmailChannel) and mail.port == 465 and mail._password == "pw"
    assert isinstance(build_channel("local", {"type": "outbox"}, engine, CONFIG), OutboxChannel)


@pytest.mark.parametrize(
    "spec,entry,words",
    [
        ({"type": "wechat"}, "channels.x.type", ["unknown channel type 'wechat'", "wecom, dingtalk"]),
        ({"webhook_url_env": "W"}, "channels.x.type", ["missing"]),
        (
            {"type": "wecom", "webhook_url_env": "WECOM_URL", "colour": "red"},
            "channels.x.colour",
            ["unknown setting", "webhook_url_env"],
        ),
        (
            {"type": "wecom", "webhook_url_env": "NOT_SET_ANYWHERE"},
            "channels.x.webhook_url_env",
            ["NOT_SET_ANYWHERE is not set", "export NOT_SET_ANYWHERE="],
        ),
        ({"type": "wecom"}, "channels.x.webhook_url_env", ["missing"]),
        (
            {"type": "wecom", "webhook_url": "https://qyapi.weixin.qq.com/...key=k"},
            "channels.x.webhook_url",
            ["secret", "webhook_url_env"],
        ),
        ({"type": "dingtalk", "webhook_url_env": "WECOM_URL", "secret": "s"}, "channels.x.secret", ["secret_env"]),
        (
            {"type": "wecom", "webhook_url_env": "BAD_URL"},
            "channels.x.webhook_url_env",
            ["BAD_URL does not hold an http(s) URL"],
        ),
        ({"type": "wecom", "webhook_url_env": "WECOM_URL", "timeout": "soon"}, "channels.x.timeout", ["10s"]),
        (
            {"type": "wecom", "webhook_url_env": "WECOM_URL", "mentions": "zhangsan"},
            "channels.x.mentions",
            ["write a list"],
        ),
        ({"type": "email", "host": "h", "sender": "a@b"}, "channels.x.recipients", ["missing"]),
        (
            {"type": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "username": "u"},
            "channels.x.password_env",
            ["missing"],
        ),
        (
            {"type": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "ssl": True, "starttls": True},
            "channels.x.ssl",
            ["not both"],
        ),
        ({"type": "webhook"}, "channels.x.url", ["missing"]),
        ("wecom", "channels.x", ["must be a mapping"]),
    ],
)
def test_build_channel_errors_name_file_entry_and_fix(monkeypatch, spec, entry, words):
    monkeypatch.setenv("WECOM_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
    monkeypatch.setenv("BAD_URL", "just-the-key")
    with pytest.raises(ConfigError) as info:
        build_channel("x", spec, sa.create_engine("sqlite://"), CONFIG)
    err = info.value
    assert err.file == CONFIG and err.entry == entry and err.fix
    for word in words:
        assert word in str(err)
    assert "just-the-key" not in str(err)
