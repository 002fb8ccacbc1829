"""What a customer may see of personal data: pure functions, no I/O.

Phone numbers keep the first three and last four digits (138****1234), names
keep the first character (张*), addresses stop at the district or county
(省市区). Carrier event texts often carry the courier's mobile number and the
name of whoever signed; both are masked the same way before a customer sees them.
"""

from __future__ import annotations

import re

# A mainland mobile number, optionally after the country code (+86, 0086, 86), with
# spaces or dashes between the groups. Digits right before or after it mean a longer
# number (a waybill, a date), which is left alone; a bare 86 must not follow a letter
# either, so waybill numbers like SF86... stay intact.
_MOBILE_IN_TEXT = re.compile(
    r"(?:(?:\+|(?<![0-9A-Za-z])00|(?<![0-9A-Za-z]))86[-\s]?|(?<!\d))"
    r"(1[3-9]\d)[-\s]?(\d{4})[-\s]?(\d{4})(?!\d)"
)

# A person's name after the carrier's signer/recipient label. Either the label is followed
# by a separator ("签收人：张三丰", "收件人 李四 已签收", "签收人是王五") and the name runs to the
# next space, digit or punctuation, or the name sits right before 签收/代收 ("收件人李四已签收").
# Words that follow the label in ordinary sentences ("收件人拒收", "收件人不在", "收件人本人签收")
# are not names.
_LABEL = r"(?:签收人|收件人|代收人|收货人)"
_SEPARATOR = r"(?:\s*(?:是|为)[\s:：\[【(（\"“]*|[\s:：\[【(（\"“]+)"
_NOT_A_NAME = r"(?!本人|已|签收|代收|拒|不|未|没|无|凭|要求|联系|电话|手机|信息|地址|的|在|于\s*\d)"
_CJK_NAME = r"[\u4e00-\u9fff·•]{1,20}?"
_LATIN_NAME = r"[A-Za-z]+(?:[ .'\-][A-Za-z]+)*"
_NAME_END = r"(?=$|[\s\d,，.。;；:：!！?？)）\]】\"”>》、/|]|已|签收|代收|拒|于|在|的|电话|手机)"
_NAME_IN_TEXT = re.compile(
    rf"(?P<label>{_LABEL}{_SEPARATOR}){_NOT_A_NAME}(?P<name>{_CJK_NAME}|{_LATIN_NAME}){_NAME_END}"
    rf"|(?P<bare_label>{_LABEL}){_NOT_A_NAME}(?P<bare_name>[\u4e00-\u9fff·]{{2,3}}?)(?=已?签收|代收)"
)
# Who signed when it was not a person, or the customer themself: nothing to hide.
_NOT_A_PERSON = re.compile(r"本人|家人|同事|前台|门卫|保安|物业|收发室|传达室|快递柜|丰巢|驿站|代收点|超市|便利店|公司")

# One administrative level: a short run of characters that cannot belong to a
# street address, ending in the level's suffix.
_NAME = r"[^\s\d,，;；:：()（）#\-镇乡街路道号村巷弄栋室楼层单元]{1,12}?"
_MUNICIPALITY = re.compile(r"(北京|上海|天津|重庆)市?")
_PROVINCE = re.compile(rf"{_NAME}(省|自治区|特别行政区)")
_CITY = re.compile(rf"{_NAME}(市|自治州|地区|盟)")
_DISTRICT = re.compile(rf"{_NAME}(区|县|市|旗)")


def mask_phone(phone: str | None) -> str:
    """'13812341234' -> '138****1234'; other numbers keep only their last four digits."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) == 11 and digits.startswith("1"):
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) > 4:
        return f"****{digits[-4:]}"
    return "****" if digits else ""


def mask_name(name: str | None) -> str:
    """'张三' -> '张*': the first character and one star, whatever the length."""
    name = (name or "").strip()
    return f"{name[0]}*" if name else ""


def mask_address(address: str | None) -> str:
    """Cut a Chinese address after the district or county: '广东省深圳市南山区…' -> '广东省深圳市南山区'.

    Only recognised administrative levels are kept; an address that does not
    start with one is hidden completely rather than guessed at.
    """
    text = re.sub(r"\s+", "", address or "")
    kept, pos = "", 0
    m = _MUNICIPALITY.match(text)
    if m:
        kept, pos = m.group(0), m.end()
    else:
        for level in (_PROVINCE, _CITY):
            m = level.match(text, pos)
            if m:
                kept, pos = kept + m.group(0), m.end()
    m = _DISTRICT.match(text, pos)
    if m:
        kept += m.group(0)
    return kept


def mask_phones_in_text(text: str | None) -> str:
    """Mask every mobile number (1[3-9] and nine more digits, dashes or spaces allowed, +86 or not) in free text."""
    return _MOBILE_IN_TEXT.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text or "")


def _mask_signer(m: re.Match) -> str:
    label, name = (m["label"], m["name"]) if m["label"] is not None else (m["bare_label"], m["bare_name"])
    return m.group(0) if _NOT_A_PERSON.search(name) else label + mask_name(name)


def mask_names_in_text(text: str | None) -> str:
    """Mask the name after 签收人/收件人/代收人/收货人 in free text: '签收人：张三丰' -> '签收人：张*'."""
    return _NAME_IN_TEXT.sub(_mask_signer, text or "")


def mask_carrier_text(text: str | None) -> str:
    """A carrier's free text as a customer may see it: mobile numbers and signer names masked."""
    return mask_names_in_text(mask_phones_in_text(text))
