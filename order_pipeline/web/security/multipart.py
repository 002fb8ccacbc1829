"""A bounded reader of `multipart/form-data` bodies.

The body is cut at its delimiters with one `bytes.split` that stops after the
part limit, so a body of thousands of tiny parts is refused after scanning at
most the allowed parts, never parsed part by part. Only the short header block
of each allowed part goes through `email.parser`.
"""

from __future__ import annotations

import binascii
import quopri
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from email.utils import collapse_rfc2231_value

from order_pipeline.web.security.errors import FormError

MAX_BOUNDARY = 70  # RFC 2046
MAX_PART_HEADER_BYTES = 4096  # a Content-Disposition and a Content-Type, with room to spare


def boundary_of(content_type: str) -> bytes:
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= MAX_BOUNDARY or not boundary.isascii():
        raise FormError(400, "multipart body without a usable boundary")
    return boundary.encode("ascii")


def parse_multipart(content_type: str, body: bytes, max_parts: int) -> dict[str, str]:
    """The first value of each named field; more than `max_parts` parts is refused with 413."""
    delimiter = b"\r\n--" + boundary_of(content_type)
    # The CRLF in front lets a body that opens with its first delimiter split like the rest.
    pieces = (b"\r\n" + body).split(delimiter, max_parts + 1)
    form: dict[str, str] = {}
    for index, piece in enumerate(pieces[1:]):
        if piece.startswith(b"--"):
            return form  # the closing delimiter; what follows it is an epilogue, ignored
        if index == max_parts:
            raise FormError(413, f"more than {max_parts} parts")
        _read_part(piece, form)
    raise FormError(400, "malformed multipart body (no closing delimiter)")


def _read_part(piece: bytes, form: dict[str, str]) -> None:
    line_end = piece.find(b"\r\n")
    if line_end < 0 or piece[:line_end].strip(b" \t"):
        raise FormError(400, "malformed multipart delimiter line")
    rest = piece[line_end + 2 :]
    if rest.startswith(b"\r\n"):
        head, value = b"", rest[2:]
    else:
        head_end = rest.find(b"\r\n\r\n", 0, MAX_PART_HEADER_BYTES)
        if head_end < 0:
            raise FormError(400, "multipart part headers unterminated or too long")
        head, value = rest[:head_end], rest[head_end + 4 :]
    headers = BytesParser(policy=HTTP).parsebytes(head + b"\r\n\r\n", headersonly=True)
    raw_name = headers.get_param("name", header="content-disposition")
    name = collapse_rfc2231_value(raw_name) if raw_name else ""
    if not name or headers.get_filename() is not None:
        return  # a file upload or an unnamed part: no form field
    if headers.get_content_maintype() == "multipart":
        form.setdefault(name, "")  # a nested multipart carries no text value
        return
    form.setdefault(name, _text(headers, value))


def _text(headers: Message, value: bytes) -> str:
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            value = binascii.a2b_base64(value)
        elif encoding == "quoted-printable":
            value = quopri.decodestring(value)
        return value.decode(headers.get_content_charset() or "utf-8", "replace")
    except (binascii.Error, LookupError) as e:
        raise FormError(400, f"unreadable multipart part ({e})") from None
