"""Posted forms: the bounded multipart reader, the per-route body caps and the refusals, each audited."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from helpers import PUSH_SALT, STAFF_USER, access_rows, login, push_form

from order_pipeline.contract.schema import raw_tracking_events
from order_pipeline.web.hooks import PUSH_BODY_BYTES
from order_pipeline.web.ops.auth import STAFF_FORM_BYTES
from order_pipeline.web.security.forms import MAX_FIELDS, FormError, parse_multipart

BOUNDARY = "form-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
URLENCODED = {"content-type": "application/x-www-form-urlencoded"}


def part(name: str, value: str, headers: str = "") -> str:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n{headers}\r\n{value}\r\n'


def multipart(fields: dict[str, str], filler: int = 0) -> bytes:
    """`fields` and then `filler` more parts, as one multipart body."""
    parts = [part(k, v) for k, v in fields.items()] + [part(f"pad{i}", "x") for i in range(filler)]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def padded(form: dict[str, str], size: int) -> bytes:
    """`form` urlencoded with one more field that makes it exactly `size` bytes."""
    body = urlencode(form) + "&pad="
    return (body + "x" * (size - len(body))).encode()


def test_multipart_part_limit_at_its_boundary():
    assert parse_multipart(MULTIPART, multipart({"a": "1"}, filler=MAX_FIELDS - 1), MAX_FIELDS)["a"] == "1"
    with pytest.raises(FormError) as caught:
        parse_multipart(MULTIPART, multipart({"a": "1"}, filler=MAX_FIELDS), MAX_FIELDS)
    assert caught.value.status == 413


def test_multipart_reads_charsets_and_transfer_encodings_and_skips_files():
    body = (
        part("plain", "包裹")
        + part("latin", "caf\xe9", "Content-Type: text/plain; charset=latin-1\r\n")
        + part("b64", base64.b64encode("已签收".encode()).decode(), "Content-Transfer-Encoding: base64\r\n")
        + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="upload"; filename="a.txt"\r\n\r\nfile\r\n'
        + part("plain", "second value ignored")
        + f"--{BOUNDARY}--\r\nepilogue"
    )
    form = parse_multipart(MULTIPART, body.encode("utf-8").replace("café".encode(), b"caf\xe9"), MAX_FIELDS)
    assert form == {"plain": "包裹", "latin": "café", "b64": "已签收"}


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", multipart({"a": "1"})),  # no boundary
        (MULTIPART, multipart({"a": "1"})[: -len(f"--{BOUNDARY}--\r\n")]),  # no closing delimiter
        (MULTIPART, f"--{BOUNDARY}\r\n{'X-Long: y' * 1000}\r\n\r\nv\r\n--{BOUNDARY}--\r\n".encode()),
        (MULTIPART, b"no delimiter at all"),
    ],
)
def test_malformed_multipart_is_refused_with_400(content_type, body):
    with pytest.raises(FormError) as caught:
        parse_multipart(content_type, body, MAX_FIELDS)
    assert caught.value.status == 400


def test_push_part_limit_at_its_boundary(client, caplog):
    form = push_form()
    ok = client.post("/hooks/kuaidi100", content=multipart(form, MAX_FIELDS - 2), headers={"content-type": MULTIPART})
    assert ok.status_code == 200 and ok.json()["result"] is True
    over = client.post("/hooks/kuaidi100", content=multipart(form, MAX_FIELDS - 1), headers={"content-type": MULTIPART})
    assert over.status_code == 413 and over.json()["result"] is False and over.json()["returnCode"] == "413"
    assert any("refused: more than 50 parts" in rec.getMessage() for rec in caplog.records)


def test_push_body_cap_at_its_boundary(client, caplog):
    ok = client.post("/hooks/kuaidi100", content=padded(push_form(), PUSH_BODY_BYTES), headers=URLENCODED)
    assert ok.status_code == 200 and ok.json()["result"] is True
    over = client.post("/hooks/kuaidi100", content=padded(push_form(), PUSH_BODY_BYTES + 1), headers=URLENCODED)
    assert over.status_code == 413 and over.json()["returnCode"] == "413"
    assert any("Kuaidi100 push" in r.getMessage() and "limit" in r.getMessage() for r in caplog.records)


def test_undeclared_body_over_the_cap_is_refused_while_read(client):
    chunks = iter([b"param=", b"x" * PUSH_BODY_BYTES])  # sent chunked: no length to refuse it by up front
    r = client.post("/hooks/kuaidi100", content=chunks, headers=URLENCODED)
    assert r.status_code == 413 and r.json()["returnCode"] == "413"


def long_history_push(events: int) -> dict[str, str]:
    """A signed push of one waybill with `events` scans, one a minute."""
    scans = [
        {"time": f"2026-11-{1 + i // 1440:02d} {i % 1440 // 60:02d}:{i % 60:02d}:00", "status": "在途"}
        for i in range(events)
    ]
    history = [
        {**e, "ftime": e["time"], "context": f"快件到达第 {i} 站【转运中心】", "areaName": "广东,深圳市"}
        for i, e in enumerate(scans)
    ]
    result = {
        "message": "ok",
        "state": "0",
        "status": "200",
        "ischeck": "0",
        "com": "shunfeng",
        "nu": "SF1",
        "data": history[::-1],
    }
    param = json.dumps({"status": "polling", "message": "", "lastResult": result}, ensure_ascii=False)
    return {"param": param, "sign": hashlib.md5((param + PUSH_SALT).encode()).hexdigest().upper()}


@pytest.mark.parametrize("as_multipart", [False, True])
def test_push_with_a_long_history_is_taken(client, as_multipart):
    form = long_history_push(3000)
    assert len(urlencode(form)) > 500_000
    if as_multipart:
        r = client.post("/hooks/kuaidi100", content=multipart(form), headers={"content-type": MULTIPART})
    else:
        r = client.post("/hooks/kuaidi100", data=form)
    assert r.status_code == 200 and r.json()["result"] is True
    with client.world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(raw_tracking_events)).scalar() == 3000


def test_login_refuses_multipart_and_audits_it(client):
    r = client.post("/ops/login", files={"username": (None, STAFF_USER), "password": (None, "x")})
    assert r.status_code == 415
    assert [(row["actor"], row["outcome"]) for row in access_rows(client)] == [("anonymous", "form_refused")]


def test_login_body_cap_at_its_boundary(client):
    at_cap = client.post("/ops/login", content=padded({"username": "eve"}, STAFF_FORM_BYTES), headers=URLENCODED)
    assert at_cap.status_code == 403  # read, then refused for its missing CSRF token
    over = client.post("/ops/login", content=padded({"username": "eve"}, STAFF_FORM_BYTES + 1), headers=URLENCODED)
    assert over.status_code == 413
    assert [(row["actor"], row["outcome"]) for row in access_rows(client)] == [
        ("eve", "csrf_refused"),
        ("anonymous", "form_refused"),
    ]


def test_unreadable_login_form_is_refused_with_400_and_audited(client):
    r = client.post("/ops/login", content=padded({}, 10) + b"&" * MAX_FIELDS, headers=URLENCODED)
    assert r.status_code == 400
    assert [row["outcome"] for row in access_rows(client)] == ["form_refused"]


def test_staff_forms_refuse_multipart(client):
    login(client)
    assert client.post("/ops/logout", files={"csrf": (None, "x")}, follow_redirects=False).status_code == 403
    assert client.get("/ops/", follow_redirects=False).status_code == 200  # still logged in
