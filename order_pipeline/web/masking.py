"""What a customer may see of personal data: pure functions, no I/O.

Phone numbers keep the first three and last four digits (138****1234), names
keep the first character (张*), addresses stop at the district or county
(省市区). Carrier event texts often carry the courier's mobile number; it is
masked the same way before a customer sees it.
"""

from __future__ import annotations

import re

_MOBILE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d)[-\s]?(\d{4})[-\s]?(\d{4})(?!\d)")

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
    """Mask every mobile number (1[3-9] and nine more digits, dashes or spaces allowed) in free text."""
    return _MOBILE_IN_TEXT.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text or "")
