"""Reading posted forms without extra dependencies.

Browsers and Kuaidi100 post `application/x-www-form-urlencoded`; a few HTTP
clients send the same fields as `multipart/form-data`, which only the routes
that need it accept. Both are read into a plain dict of the first value per
field. Each route passes its own body cap: the body is refused as soon as its
declared length or the bytes received so far pass it, before anything is parsed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from order_pipeline.web.security.errors import FormError
from order_pipeline.web.security.multipart import parse_multipart

__all__ = ["MAX_FIELDS", "FormError", "parse_multipart", "parse_urlencoded", "read_body", "read_form"]

MAX_FIELDS = 50
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


def parse_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormError(400, f"unreadable form body ({e})") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 once it passes `max_bytes` (a declared length over it: before reading any)."""
    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise FormError(413, f"body of {declared} bytes, over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise FormError(413, f"body over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, *, max_bytes: int, multipart: bool) -> dict[str, str]:
    """The posted fields. Raises FormError for a body refused here (the kind is checked before reading it)."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind == MULTIPART and not multipart:
        raise FormError(415, "multipart/form-data is not accepted here")
    if kind not in (URLENCODED, MULTIPART, ""):
        raise FormError(415, f"expected a form, got {kind}")
    body = await read_body(request, max_bytes)
    if kind == MULTIPART:
        return parse_multipart(content_type, body, MAX_FIELDS)
    return parse_urlencoded(body)
