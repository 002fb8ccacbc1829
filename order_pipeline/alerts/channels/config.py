"""Channels built from `channels:` entries of the config; every mistake a ConfigError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

import sqlalchemy as sa

from order_pipeline.alerts.channels.dingtalk import DingTalkRobot
from order_pipeline.alerts.channels.email import EmailChannel
from order_pipeline.alerts.channels.feishu import FeishuBot
from order_pipeline.alerts.channels.message import DEFAULT_TIMEOUT, Channel
from order_pipeline.alerts.channels.outbox import OutboxChannel
from order_pipeline.alerts.channels.slack import SlackWebhook
from order_pipeline.alerts.channels.webhook import JsonWebhook
from order_pipeline.alerts.channels.wecom import WeComRobot
from order_pipeline.contract.parsing import ENV_NAME, ConfigError, parse_duration

_ROBOT = {"webhook_url_env", "mentions", "timeout"}
FIELDS: dict[str, set[str]] = {
    "wecom": _ROBOT,
    "dingtalk": _ROBOT | {"secret_env"},
    "feishu": _ROBOT | {"secret_env"},
    "slack": _ROBOT,
    "webhook": {"url", "url_env", "secret_env", "mentions", "timeout"},
    "email": {"host", "port", "sender", "recipients", "username", "password_env", "starttls", "ssl", "timeout"},
    "outbox": {"mentions"},
}
_INLINE_SECRETS = {"webhook_url", "secret", "password"}  # written without `_env`


def validate_channel(name: str, spec: Any, config_file: str | Path) -> None:
    """Check a `channels:` entry as loading the code location does: every setting, and the names of
    the variables that hold its secrets, without reading them (the sends and `order-pipeline check` do)."""
    build_channel(name, spec, None, config_file, read_secrets=False)


def build_channel(
    name: str, spec: Any, engine: sa.Engine | None, config_file: str | Path, *, read_secrets: bool = True
) -> Channel:
    """The channel a `channels:` entry describes, e.g. `{"type": "wecom", "webhook_url_env": "WECOM_URL"}`.

    Secrets (robot webhook URLs, which hold the key; signing secrets; the SMTP password) come only
    from environment variables named by `*_env` settings. Mistakes raise `ConfigError`.
    """
    r = _Entry(name, spec, Path(config_file), read_secrets)
    kind = r.kind()
    mentions = r.strings("mentions", '["13800000000", zhangsan]')
    if kind == "outbox":
        return OutboxChannel(engine, name=name, mentions=mentions)
    timeout = r.timeout()
    if kind == "wecom":
        return WeComRobot(r.url_env("webhook_url_env"), name=name, mentions=mentions, timeout=timeout)
    if kind == "dingtalk":
        return DingTalkRobot(
            r.url_env("webhook_url_env"), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout
        )
    if kind == "feishu":
        return FeishuBot(
            r.url_env("webhook_url_env"), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout
        )
    if kind == "slack":
        return SlackWebhook(r.url_env("webhook_url_env"), name=name, mentions=mentions, timeout=timeout)
    if kind == "webhook":
        return JsonWebhook(r.webhook_url(), r.env("secret_env"), name=name, mentions=mentions, timeout=timeout)
    return r.email(timeout)


class _Entry:
    """Reads one `channels.<name>` entry; every mistake names the file, the setting and the fix."""

    def __init__(self, name: str, spec: Any, file: Path, read_secrets: bool = True):
        self.name, self.spec, self.file, self.read_secrets = name, spec, file, read_secrets

    def fail(self, setting: str | None, problem: str, fix: str) -> NoReturn:
        entry = f"channels.{self.name}" + (f".{setting}" if setting else "")
        raise ConfigError(self.file, entry, problem, fix)

    def kind(self) -> str:
        if not isinstance(self.spec, dict):
            self.fail(
                None, "must be a mapping", "write `type: wecom` (or another type) and its settings under the name"
            )
        kind = self.spec.get("type")
        if kind not in FIELDS:
            problem = "missing" if kind is None else f"unknown channel type {kind!r}"
            self.fail("type", problem, f"use one of: {', '.join(FIELDS)}")
        for key in self.spec:
            if key in _INLINE_SECRETS:
                self.fail(
                    key,
                    f"`{key}` is a secret and must not be in the file",
                    f"remove it, export it in an environment variable and set `{key}_env:` to that variable's name",
                )
            if key != "type" and key not in FIELDS[kind]:
                self.fail(key, "unknown setting", f"a {kind} channel takes: type, {', '.join(sorted(FIELDS[kind]))}")
        return kind

    @overload
    def env(self, setting: str, required: Literal[True]) -> str: ...
    @overload
    def env(self, setting: str, required: bool = False) -> str | None: ...
    def env(self, setting: str, required: bool = False) -> str | None:
        var = self.spec.get(setting)
        if var is None:
            if required:
                self.fail(setting, "missing", f"set `{setting}:` to the name of the environment variable that holds it")
            return None
        if not isinstance(var, str) or not ENV_NAME.fullmatch(var):
            self.fail(setting, f"{var!r} is not an environment variable name", "write a name such as WECOM_ROBOT_URL")
        if not self.read_secrets:
            return f"${var}"  # stands in for the value, which is read only when the channel sends
        if var not in os.environ:
            self.fail(setting, f"environment variable {var} is not set", f"export {var}=... before starting")
        return os.environ[var]

    def url_env(self, setting: str) -> str:
        url = self.env(setting, required=True)
        if self.read_secrets and not url.startswith(("https://", "http://")):
            # Not echoed: the value is a secret.
            var = self.spec[setting]
            self.fail(
                setting,
                f"environment variable {var} does not hold an http(s) URL",
                f"set {var} to the full webhook URL, e.g. https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...",
            )
        return url

    def webhook_url(self) -> str:
        if "url" in self.spec and "url_env" in self.spec:
            self.fail("url", "both `url` and `url_env` are set", "keep one of them")
        if "url_env" in self.spec:
            return self.url_env("url_env")
        url = self.spec.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            self.fail(
                "url",
                "missing" if url is None else f"{url!r} is not an http(s) URL",
                "set `url: https://...`, or `url_env:` when the URL holds a token",
            )
        return url

    @overload
    def text(self, setting: str, required: Literal[True]) -> str: ...
    @overload
    def text(self, setting: str, required: bool) -> str | None: ...
    def text(self, setting: str, required: bool) -> str | None:
        value = self.spec.get(setting)
        if value is None:
            if required:
                self.fail(setting, "missing", f"set `{setting}:`")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(setting, f"{value!r} is not text", f"write `{setting}:` as text")
        return value

    def strings(self, setting: str, example: str, required: bool = False) -> tuple[str, ...]:
        value = self.spec.get(setting)
        if value is None and not required:
            return ()
        # YAML reads an unquoted mobile number as an int; it is still a mobile number.
        names = isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
        if not names or not value:
            problem = "missing" if value is None else "is empty" if value == [] else f"{value!r} is not a list of names"
            self.fail(setting, problem, f"write a list, e.g. `{setting}: {example}`")
        return tuple(str(v) for v in value)

    def flag(self, setting: str) -> bool:
        value = self.spec.get(setting, False)
        if not isinstance(value, bool):
            self.fail(setting, f"{value!r} is not true or false", f"write `{setting}: true` or `{setting}: false`")
        return value

    def timeout(self) -> float:
        value = self.spec.get("timeout", f"{DEFAULT_TIMEOUT:g}s")
        try:
            seconds = parse_duration(value).total_seconds()
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            self.fail("timeout", f"{value!r} is not a duration", "write a number and a unit, e.g. 10s")
        return seconds

    def email(self, timeout: float) -> EmailChannel:
        starttls, implicit_tls = self.flag("starttls"), self.flag("ssl")
        if starttls and implicit_tls:
            self.fail(
                "ssl",
                "both `starttls` and `ssl` are set",
                "use `ssl: true` for port 465, or `starttls: true` for port 587, not both",
            )
        port = self.spec.get("port", 465 if implicit_tls else 587 if starttls else 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            self.fail("port", f"{port!r} is not a port number", "write a number such as 25, 465 or 587")
        username = self.text("username", required=False)
        password = self.env("password_env", required=username is not None)
        return EmailChannel(
            self.text("host", required=True),
            port,
            self.text("sender", required=True),
            self.strings("recipients", "[ops@example.com]", required=True),
            username,
            password,
            starttls,
            ssl=implicit_tls,
            name=self.name,
            timeout=timeout,
        )
