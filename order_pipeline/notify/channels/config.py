"""Customer channels built from their `notifications.channels` entries; secrets come from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import sqlalchemy as sa

from order_pipeline.contract.parsing import ConfigError, parse_duration
from order_pipeline.notify.channels.aliyun_sms import DEFAULT_ENDPOINT as ALIYUN_ENDPOINT
from order_pipeline.notify.channels.aliyun_sms import AliyunSms
from order_pipeline.notify.channels.message import CustomerChannel
from order_pipeline.notify.channels.outbox import CustomerOutbox
from order_pipeline.notify.channels.tencent_sms import DEFAULT_ENDPOINT as TENCENT_ENDPOINT
from order_pipeline.notify.channels.tencent_sms import VARIABLE_MAX, TencentSms
from order_pipeline.notify.channels.wechat import DEFAULT_API, WeChatTemplate
from order_pipeline.notify.channels.wechat_tokens import TokenStore

# Where each vendor answers unless a channel names its `endpoint` (`api` for WeChat).
VENDOR_ENDPOINTS = {"aliyun_sms": ALIYUN_ENDPOINT, "tencent_sms": TENCENT_ENDPOINT, "wechat": DEFAULT_API}


def _secret(spec: dict, setting: str, entry: str, config_path: Path) -> str:
    env = spec[setting]
    value = os.environ.get(env, "")
    if not value:
        raise ConfigError(
            config_path, f"{entry}.{setting}", f"environment variable {env} is not set", f"export {env} before starting"
        )
    return value


def build_customer_channel(
    name: str, spec: dict, engine: sa.Engine, config_path: Path, transport: httpx.BaseTransport | None = None
) -> CustomerChannel:
    """The channel of one (already checked) entry; a secret's variable that is unset raises ConfigError."""
    entry, kind = f"notifications.channels.{name}", spec["type"]
    timeout = parse_duration(spec.get("timeout", "10s")).total_seconds()
    if kind == "outbox":
        return CustomerOutbox(engine, name=name)
    if kind == "aliyun_sms":
        return AliyunSms(
            _secret(spec, "access_key_id_env", entry, config_path),
            _secret(spec, "access_key_secret_env", entry, config_path),
            str(spec["sign_name"]),
            name=name,
            endpoint=str(spec.get("endpoint", ALIYUN_ENDPOINT)),
            timeout=timeout,
            transport=transport,
        )
    if kind == "tencent_sms":
        return TencentSms(
            _secret(spec, "secret_id_env", entry, config_path),
            _secret(spec, "secret_key_env", entry, config_path),
            str(spec["sdk_app_id"]),
            str(spec["sign_name"]),
            str(spec.get("region", "ap-guangzhou")),
            name=name,
            endpoint=str(spec.get("endpoint", TENCENT_ENDPOINT)),
            timeout=timeout,
            transport=transport,
            variable_max=spec.get("variable_max", VARIABLE_MAX),
        )
    return WeChatTemplate(
        str(spec["app_id"]),
        _secret(spec, "app_secret_env", entry, config_path),
        TokenStore(engine),
        name=name,
        api=str(spec.get("api", DEFAULT_API)),
        timeout=timeout,
        transport=transport,
    )
