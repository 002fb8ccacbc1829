"""What keeps the web app's data safe before any page is served: masking of phones, names,
addresses and carrier texts, signed links, password hashes, rate limits, and the columns it is given."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from helpers import FULL_ADDRESS, NOW, PUBLISHED_TABLES, SECRET, write_config

from order_pipeline.contract.canonical import SOURCE_ENTITIES
from order_pipeline.contract.config import load_config
from order_pipeline.domain.links import TokenCheck, customer_link, make_token, verify_token
from order_pipeline.domain.masking import (
    mask_address,
    mask_carrier_text,
    mask_name,
    mask_names_in_text,
    mask_phone,
    mask_phones_in_text,
)
from order_pipeline.domain.passwords import hash_password, verify_password
from order_pipeline.web.security.audit import audit_text
from order_pipeline.web.security.lockout import Lockouts, LockPolicy
from order_pipeline.web.security.ratelimit import Rate, RateLimiter, client_key, take
from order_pipeline.web.settings import WebSettings, parse_rate


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("13812345678", "138****5678"),
        ("+86 138 1234 5678", "138****5678"),
        ("138-1234-5678", "138****5678"),
        ("010-87654321", "****4321"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_phone(raw, masked):
    assert mask_phone(raw) == masked


@pytest.mark.parametrize(
    "raw, masked", [("张三丰", "张*"), ("李四", "李*"), ("欧阳娜娜", "欧*"), ("  ", ""), (None, "")]
)
def test_mask_name(raw, masked):
    assert mask_name(raw) == masked


@pytest.mark.parametrize(
    "raw, masked",
    [
        (FULL_ADDRESS, "广东省深圳市南山区"),
        ("北京市朝阳区建国路88号SOHO现代城", "北京市朝阳区"),
        ("上海浦东新区张江路1号", "上海浦东新区"),
        ("江苏省苏州市昆山市玉山镇前进路2号", "江苏省苏州市昆山市"),
        ("浙江省杭州市淳安县千岛湖镇新安大街3号", "浙江省杭州市淳安县"),
        ("广西壮族自治区南宁市青秀区民族大道100号", "广西壮族自治区南宁市青秀区"),
        ("新疆维吾尔自治区伊犁哈萨克自治州伊宁市解放路1号", "新疆维吾尔自治区伊犁哈萨克自治州伊宁市"),
        ("深圳市南山区科技园", "深圳市南山区"),
        ("123 Main Street, Springfield", ""),
        (None, ""),
    ],
)
def test_mask_address_keeps_province_city_district_only(raw, masked):
    assert mask_address(raw) == masked


def test_mask_phones_in_carrier_text():
    text = "快递员李师傅正在派件，电话13987654321，备用 139-8765-4321；运单 SF139876543210 网点 0755-12345678"
    assert mask_phones_in_text(text) == (
        "快递员李师傅正在派件，电话139****4321，备用 139****4321；运单 SF139876543210 网点 0755-12345678"
    )


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("电话+8613987654321", "电话139****4321"),
        ("电话 +86 139 8765 4321。", "电话 139****4321。"),
        ("联系 86 139 8765 4321", "联系 139****4321"),
        ("联系8613987654321", "联系139****4321"),
        ("0086-139-8765-4321", "139****4321"),
        ("备用 139-8765-4321", "备用 139****4321"),
        ("(+86)13987654321", "(+86)139****4321"),
    ],
)
def test_mask_phones_with_country_code(raw, masked):
    assert mask_phones_in_text(raw) == masked


@pytest.mark.parametrize(
    "text",
    [
        "运单 SF139876543210 已揽收",
        "运单 SF8613987654321",
        "运单 75139876543210",
        "单号 13987654321012",
        "2026-11-25 13:59:59 到达",
        "20261125 139 件",
        "邮编 518000，重 1.39 kg",
        "网点 0755-12345678",
        "+86 755 8765 4321",
    ],
)
def test_ordinary_numbers_stay_as_they_are(text):
    assert mask_phones_in_text(text) == text
    assert mask_carrier_text(text) == text


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("已签收，签收人：张三丰", "已签收，签收人：张*"),
        ("收件人 李四 已签收", "收件人 李* 已签收"),
        ("收件人李四已签收", "收件人李*已签收"),
        ("签收人是王五，感谢使用", "签收人是王*，感谢使用"),
        ("签收人:欧阳娜娜 电话:13912345678", "签收人:欧* 电话:139****5678"),
        ("您的快件已由代收人赵六代收", "您的快件已由代收人赵*代收"),
        ("签收人: Zhang San, thanks", "签收人: Z*, thanks"),
        ("签收人：于谦。", "签收人：于*。"),
    ],
)
def test_mask_signer_names_in_carrier_text(raw, masked):
    assert mask_carrier_text(raw) == masked


@pytest.mark.parametrize(
    "text",
    [
        "本人签收",
        "快件已由收件人本人签收",
        "拒签: 收件人拒收",
        "收件人不在，已放驿站",
        "收件人要求改派",
        "收件人电话无人接听",
        "签收人：前台",
        "已签收，签收人: 菜鸟驿站",
        "代收人：门卫",
        "收件人于2026-11-25签收",
        "收件人地址不详",
    ],
)
def test_signer_texts_without_a_person_name_stay(text):
    assert mask_names_in_text(text) == text


def test_tokens_sign_order_and_expiry():
    token = make_token("SO1", NOW + timedelta(days=7), SECRET)
    assert verify_token("SO1", token, SECRET, NOW) is TokenCheck.VALID
    assert verify_token("SO2", token, SECRET, NOW) is TokenCheck.INVALID
    assert verify_token("SO1", token, b"another-secret-0123456789", NOW) is TokenCheck.INVALID
    expires, sig = token.split(".")
    assert verify_token("SO1", f"{int(expires) + 86400}.{sig}", SECRET, NOW) is TokenCheck.INVALID
    assert verify_token("SO1", token, SECRET, NOW + timedelta(days=7)) is TokenCheck.EXPIRED
    for bad in (None, "", "abc", "123", "x.y", "1." + "A" * 200):
        assert verify_token("SO1", bad, SECRET, NOW) is TokenCheck.INVALID


def test_customer_link_uses_base_url_and_ttl(tmp_path, monkeypatch):
    path = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'w.db'}", {"base_url": "https://track.example.com/", "link_ttl": "2d"}
    )
    settings = WebSettings.from_config(load_config(path))
    url = customer_link(settings, "SO 1/2", NOW)
    assert url.startswith("https://track.example.com/order/SO%201%2F2?t=")
    assert url.split("t=")[1].split(".")[0] == str(int((NOW + timedelta(days=2)).timestamp()))


def test_password_hashes():
    stored = hash_password("s3cret")
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", stored)
    assert verify_password("s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert not verify_password("s3cret", "scrypt$1$2$3$bad$hash")
    assert hash_password("s3cret") != stored  # salted


def test_token_bucket_allows_burst_then_refills():
    rate = Rate(3, timedelta(minutes=1))
    bucket, waits = None, []
    for _ in range(4):
        bucket, wait = take(bucket, 1000.0, rate)
        waits.append(wait)
    assert waits == [0, 0, 0, 20]
    assert take(bucket, 1020.0, rate)[1] == 0
    limiter = RateLimiter(None)
    assert all(limiter.hit("k", 0.0) == 0 for _ in range(1000))


@pytest.mark.parametrize(
    "ip, key",
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
    ],
)
def test_rate_limit_key_groups_ipv6_by_network(ip, key):
    assert client_key(ip) == key


@pytest.mark.parametrize(
    "text, count, seconds", [("60/1m", 60, 60), ("20/m", 20, 60), ("1000/1h", 1000, 3600), ("5/30s", 5, 30)]
)
def test_parse_rate(text, count, seconds):
    rate = parse_rate(text)
    assert rate is not None
    assert (rate.count, rate.period.total_seconds()) == (count, seconds)
    assert parse_rate("off") is None


def test_id_numbers_are_not_published():
    """The ERP delivers the customer's ID number; no table the web app reads has a place for it."""
    id_columns = {c for entity in SOURCE_ENTITIES.values() for c in entity.column_names if "id_no" in c}
    assert id_columns == {"customer_id_no"}
    for table in PUBLISHED_TABLES:
        names = table.c.keys()
        assert not [c for c in names if "id_no" in c or "id_card" in c], table.name


def test_a_token_may_not_live_longer_than_the_link_ttl():
    ttl = timedelta(days=7)
    for expires, check in [
        (NOW + ttl, TokenCheck.VALID),
        (NOW + ttl + timedelta(minutes=4), TokenCheck.VALID),  # the issuer's clock a little ahead
        (NOW + ttl + timedelta(hours=1), TokenCheck.INVALID),
        (NOW + timedelta(days=3650), TokenCheck.INVALID),
    ]:
        assert verify_token("SO1", make_token("SO1", expires, SECRET), SECRET, NOW, max_ttl=ttl) is check, expires


@pytest.mark.parametrize(
    "raw, logged",
    [
        ("alice", "alice"),
        ("eve\r\nforged", "eve\\r\\nforged"),
        ("tab\there", "tab\\there"),
        ("bell\x07\x1b[31m", "bell\\x07\\x1b[31m"),
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep\x85", "line\\u2028sep\\x85"),
        ("张三", "张三"),
        (None, None),
    ],
)
def test_audit_text_escapes_control_characters(raw, logged):
    assert audit_text(raw, 64) == logged
    assert audit_text("\n" * 100, 10) == "\\n" * 5


def test_login_lockouts_grow_and_stay_few_in_memory():
    lockouts = Lockouts(LockPolicy(), max_names=10)
    assert [lockouts.failed("alice", 0.0) for _ in range(5)] == [False] * 4 + [True]
    assert lockouts.locked("alice", 0.0) == 60 and lockouts.locked("alice", 60.0) == 0
    assert lockouts.failed("alice", 60.0) and lockouts.locked("alice", 60.0) == 120
    for i in range(100):  # names sprayed by a guesser do not pile up
        lockouts.failed(f"name{i}", 100.0 + i)
    assert len(lockouts.accounts) <= 10
    lockouts.succeeded("alice")
    assert lockouts.locked("alice", 61.0) == 0
