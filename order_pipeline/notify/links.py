"""The customer's tracking link settings: where it points and how it is signed.

The link settings live in the config's `web:` section (the page the link opens), but sending a
link is the pipeline's business, not the web server's: both read them through `link_settings`.
Secrets never sit in the file: an entry names the environment variable or the file (relative
to the config file) that holds them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from order_pipeline.contract.config import Config
from order_pipeline.contract.parsing import SectionParser

DEFAULT_LINK_SECRET_ENV = "ORDER_PIPELINE_LINK_SECRET"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
MIN_SECRET_LEN = 16
GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_HTTP_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


@dataclass(frozen=True)
class LinkSettings:
    """What `domain.links.customer_link` signs with."""

    link_secret: bytes = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    link_ttl: timedelta = timedelta(days=7)


class WebSectionParser(SectionParser):
    """Reads the `web:` section; every failure names `web.<entry>` and the fix."""

    prefix = "web"

    def __init__(self, config: Config):
        super().__init__(config.path)
        self.config = config
        self.base = config.path.parent

    def secret(self, web: dict, name: str, fallback_env: str | None) -> bytes | None:
        """A secret from `<name>_file` or `<name>_env` (else `fallback_env`); None when neither is given."""
        env, file = web.get(f"{name}_env"), web.get(f"{name}_file")
        if env is not None and file is not None:
            self.fail(f"{name}_env", f"both `{name}_env` and `{name}_file` are set", "keep one of them")
        if file is not None:
            value, entry, where = self._secret_file(name, file)
        else:
            env = env if env is not None else fallback_env
            if env is None:
                return None
            env = self.env_name(env, f"{name}_env", "ORDER_LINK_SECRET")
            if not os.environ.get(env):
                self.fail(
                    f"{name}_env",
                    f"environment variable {env} is not set",
                    f"export {env}=$({GENERATE}) before starting, or set web.{name}_file",
                )
            value, entry, where = os.environ[env].strip(), f"{name}_env", f"${env}"
        if len(value) < MIN_SECRET_LEN:
            self.fail(
                entry,
                f"the secret in {where} is shorter than {MIN_SECRET_LEN} characters",
                f"generate one with {GENERATE}",
            )
        return value.encode("utf-8")

    def _secret_file(self, name: str, file) -> tuple[str, str, str]:
        path = Path(str(file))
        path = path if path.is_absolute() else self.base / path
        if not path.is_file():
            self.fail(
                f"{name}_file",
                f"file {path} does not exist",
                f"create it, e.g. `{GENERATE} > {path}`, or correct the path (read from the config file's folder)",
            )
        return path.read_text(encoding="utf-8").strip(), f"{name}_file", f"the file {path}"

    def link_settings(self, web: dict) -> LinkSettings:
        base_url = str(web.get("base_url", DEFAULT_BASE_URL))
        if not _HTTP_URL.fullmatch(base_url):
            self.fail("base_url", f"{base_url!r} is not an http(s) URL", "write e.g. https://track.example.com")
        secret = self.secret(web, "link_secret", DEFAULT_LINK_SECRET_ENV)
        assert secret is not None  # a fallback variable is always named, so a missing one has failed above
        return LinkSettings(secret, base_url.rstrip("/"), self.duration(web.get("link_ttl", "7d"), "link_ttl"))


def link_settings(config: Config) -> LinkSettings:
    """The link settings of `config`'s `web:` section; raises ConfigError naming the entry and the fix."""
    web = config.sections.get("web") or {}
    return WebSectionParser(config).link_settings(web if isinstance(web, dict) else {})
