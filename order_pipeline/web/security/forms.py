"""Reading posted forms without extra dependencies.

Browsers and Kuaidi100 post `application/x-www-form-urlencoded`; a few HTTP
clients send the same fields as `multipart/form-data`. Both are read into a
plain dict of the first value per field. The body size is capped by the app.
"""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

from starlette.requests import Request

MAX_FIELDS = 50


class FormError(ValueError):
    pass


def parse_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormError(f"unreadable form body ({e})") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise FormError("malformed multipart body")
    form: dict[str, str] = {}
    for part in list(message.iter_parts())[:MAX_FIELDS]:
        name = part.get_param("name", header="content-disposition")
        if name and part.get_filename() is None:
            payload = part.get_payload(decode=True)  # bytes for a leaf part, None for a nested multipart
            charset = part.get_content_charset() or "utf-8"
            form.setdefault(str(name), payload.decode(charset, "replace") if isinstance(payload, bytes) else "")
    return form


async def read_form(request: Request) -> dict[str, str]:
    """The posted fields. Raises FormError for a body that is neither kind of form."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return parse_multipart(content_type, body)
    if kind in ("application/x-www-form-urlencoded", ""):
        return parse_urlencoded(body)
    raise FormError(f"expected a form, got {kind}")
