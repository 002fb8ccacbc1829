"""HTML responses: Jinja2 templates that only print what Python prepared, plus safe headers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from order_pipeline.web.rendering.i18n import ERRORS, TEXT

TEMPLATES = Path(__file__).parent / "templates"

# Pages carry personal data and the link token sits in the URL: nothing is cached,
# no Referer leaves the page, nothing runs but our own markup and inline CSS.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class Pages:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True, default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def html(
        self, template: str, context: Mapping, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> HTMLResponse:
        body = self.env.get_template(template).render({"lang": "zh", **context})
        return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    def error(
        self,
        status: int,
        lang: str = "zh",
        *,
        headers: Mapping[str, str] | None = None,
        contact: str | None = None,
        wording: str | None = None,
        lookup: bool = False,
        **values,
    ) -> HTMLResponse:
        """An error page; `wording` picks a more specific text than the status's own, `lookup` links the lookup form."""
        title, message = ERRORS[lang].get(wording or status) or ERRORS[lang][500]
        context = {
            "lang": lang,
            "status": status,
            "title": title,
            "message": message.format(**values) if values else message,
            "contact": TEXT[lang]["contact"].format(contact=contact) if contact else "",
            "lookup_url": ("/track?lang=en" if lang == "en" else "/track") if lookup else "",
            "lookup_text": TEXT[lang]["lookup.again"],
        }
        return self.html("error.html", context, status=status, headers=headers)
