"""What a customer may see of personal data: pure functions, no I/O.

Phone numbers keep the first three and last four digits (138****1234), names
keep the first character (张*), addresses stop at the district or county
(省市区), ID numbers keep the two digits of the province. Carrier event texts
often carry the courier's mobile number, the name of whoever signed or
delivered, an ID number shown at a pickup point and the recipient's own street
address; all are masked before a customer sees them. Company hotlines (95338,
400-…), outlet landlines, waybill and order numbers, dates and pickup codes stay.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Digits that NFKC folds to ASCII ones: full-width ０-９ (Chinese input methods), the mathematical
# and segmented forms. Only these characters are folded; the rest of a text is left as it is.
_ASCII_DIGITS = str.maketrans(
    {
        c: unicodedata.normalize("NFKC", c)
        for block in ((0xFF10, 0xFF1A), (0x1D7CE, 0x1D800), (0x1FBF0, 0x1FBFA))
        for c in map(chr, range(*block))
    }
)
_WIDE_DIGIT = re.compile("[\uff10-\uff19\U0001d7ce-\U0001d7ff\U0001fbf0-\U0001fbf9]")
# Cheap tests that let most texts skip a pattern: a mobile number has 1[3-9] and a digit, an ID
# number 15 digits in a row.
_MOBILE_HINT = re.compile(r"1[3-9]\d")
_ID_HINT = re.compile(r"\d{15}")

# Between the groups of a mobile number: a space, a dash (ASCII, full-width or typographic) or a dot.
_SEP = r"[-.\s\u2010-\u2015\u2212\uff0d\uff0e]?"
# A mainland mobile number, optionally after the country code (+86, 0086, 86). Digits right before
# or after it mean a longer number (a waybill, a date), which is left alone; a bare 86 must not
# follow a letter either, so waybill numbers like SF86... stay intact.
_MOBILE_IN_TEXT = re.compile(
    rf"(?:(?:\+|(?<![0-9A-Za-z])00|(?<![0-9A-Za-z]))86{_SEP}|(?<!\d))"
    rf"(1[3-9]\d){_SEP}(\d{{4}}){_SEP}(\d{{4}})(?!\d)"
)

# A resident ID number: a province code, four more digits of the county, a birth date (YYYYMMDD in
# the 18-digit form, YYMMDD in the old 15-digit one), a sequence and, in the 18-digit form, a check
# digit or X. The province code and the date rule out most waybill and order numbers of that length.
_PROVINCE_CODE = r"(?:1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[12]|91)"
_MONTH_DAY = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_ID_NUMBER = re.compile(
    rf"(?<![0-9A-Za-z])({_PROVINCE_CODE})\d{{4}}"
    rf"(?:(?:18|19|20)\d\d{_MONTH_DAY}\d{{3}}[\dXx]|\d\d{_MONTH_DAY}\d{{3}})(?![0-9A-Za-z])"
)

# How many characters of the order's street address (beyond the district) a carrier text must
# repeat before they are cut: enough for a road and a house number ("文三路1"), not a bare road
# name that outlets are named after ("【文三路营业部】").
_ADDRESS_SEED = 4
# A repeated run is cut when it holds a house number or is this long: a road or landmark alone
# ("科技园路", "腾讯大厦") is shared by thousands and names the outlets there ("【科技园路营业部】").
_ADDRESS_RUN = 6
_ADDRESS_CUT = "****"

# A person's name after the carrier's signer/recipient label. Either the label is followed
# by a separator ("签收人：张三丰", "收件人 李四 已签收", "签收人是王五") and the name runs to the
# next space, digit or punctuation, or the name sits right before 签收/代收 ("收件人李四已签收").
# Words that follow the label in ordinary sentences ("收件人拒收", "收件人不在", "收件人本人签收")
# are not names.
_LABEL = r"(?:签收人|收件人|代收人|收货人|取件人|联系人)"
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
_NOT_A_PERSON = re.compile(
    r"本人|家人|他人|同事|邻居|朋友|亲属|亲友|室友|同学|前台|门卫|门口|保安|物业|收发室|传达室|快递柜|"
    r"丰巢|驿站|代收点|快递点|超市|便利店|公司|车库|楼下|宿舍"
)
# A surname and a title, or 小/老 and a surname, is how couriers are called, not who they are.
_SURNAME_AND_TITLE = re.compile(r"[小老阿][\u4e00-\u9fff]|[\u4e00-\u9fff](?:师傅|先生|女士|小姐|老师|经理|哥|姐)")

# Names without a signer label: after a courier's title ("快递员张三正在派件", "派件员：李四"), after
# 由/被 before 代收/签收 ("由张三丰代收"), and at the start of a clause before 签收 ("张三已签收").
# Nothing but the grammar marks where such a name ends, so it must begin with a common surname and
# must not be one of the everyday words that begin with one ("马上", "包裹", "成功", "商品").
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付傅方白邹孟熊秦邱江尹薛闫阎段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃"
    "武戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮"
    "柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉"
    "缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬仇栾隋商刁沙荣巫寇桑郎甄"
    "丛仲虞敖巩明佘池查麻苑迟邝封谈匡鞠惠荆乐冀郁胥班储栗燕楚鄢劳谌奚皮粟冼蔺楼满闻厉伊仝郜阚权帅屠豆"
    "朴盖练廉禹井祖漆巴丰支卿狄计索宣晋初云容敬扈晁芮浦戈伏鹿薄邸雍辜羊乌母裘亓修邰赫杭况宿鲜印逯隆茹"
    "诸战慕危玉银亢嵇哈湛宾戎勾茅利於居揭干尉冶斯元束檀衣阴昝幸奉植衡富尧"
)
_COMPOUND_SURNAMES = (
    "欧阳|司马|上官|诸葛|东方|皇甫|尉迟|公孙|慕容|长孙|宇文|司徒|夏侯|轩辕|令狐|钟离|端木|独孤|南宫|呼延"
)
_EVERYDAY_WORD = (
    r"(?!马上|包裹|包件|于今|于明|于当|于本|于次|向您|明天|明日|明早|明晚|时间|安排|安全|安保|全部|全程|文件|"
    r"公司|丰巢|车库|宿舍|路边|路口|何时|周[一二三四五六日末]|方便|申通|苏宁|华联|应该|应当|单号|成功|尚未|"
    r"关于|商品|商家|楼下|楼道|云柜|敬请|鲜花|居委|衣物|衣服|管理|房东|房主|司机|储物|万一|余下|陆续|白天|"
    r"常规|金额|高层|满意)"
)
# The first character, tested on its own first: one look-up in a table, where most positions fail.
_SURNAME_START = rf"(?=[{_SURNAMES}{''.join({c[0] for c in _COMPOUND_SURNAMES.split('|')})}])"
_SURNAMED = rf"{_SURNAME_START}{_EVERYDAY_WORD}(?:{_COMPOUND_SURNAMES}|[{_SURNAMES}])[\u4e00-\u9fff]{{1,2}}?"
_COURIER = (
    r"(?:快递员|派件员|派送员|配送员|送货员|投递员|揽件员|揽收员|收派员|取件员|业务员|派件人|揽件人|快递小哥|骑手|司机)"
)
_COURIER_NAME_END = (
    r"(?=$|[\s\d*,，.。;；:：!！?？()（）\[\]【】\"“”<>《》、/|]|正|已|将|为|给|在|于|会|的|来|去|到|请|和|与|同|您|"
    r"电话|手机|联系|派|配送|揽|取件|收件|送|签收|代收|上门|负责|师傅|先生|女士|工号)"
)
_CLAUSE_START = r"(?:^|(?<=[\s,，.。;；:：!！?？)）\]】>》、|\"“”]))"
_COURIER_NAME = re.compile(rf"(?P<before>{_COURIER}[\s:：\[【(（\"“]*)(?P<name>{_SURNAMED}){_COURIER_NAME_END}")
_NAME_AFTER_BY = re.compile(rf"(?P<before>(?:由|被)\s*)(?P<name>{_SURNAMED})(?=\s*(?:已?代收|代签|已?签收))")
_NAME_BEFORE_SIGNED = re.compile(rf"{_SURNAME_START}{_CLAUSE_START}(?P<name>{_SURNAMED})(?=已?签收|已?代收)")
# Each pattern with words a text must hold for it to apply at all: most texts skip most patterns.
_PERSON_PATTERNS = (
    (_COURIER_NAME, ("员", "人", "小哥", "骑手", "司机")),
    (_NAME_AFTER_BY, ("由", "被")),
    (_NAME_BEFORE_SIGNED, ("签收", "代收")),
)

# One administrative level: a short run of characters that cannot belong to a
# street address, ending in the level's suffix.
_NAME = r"[^\s\d,，;；:：()（）#\-镇乡街路道号村巷弄栋室楼层单元]{1,12}?"
_MUNICIPALITY = re.compile(r"(北京|上海|天津|重庆)市?")
_PROVINCE = re.compile(rf"{_NAME}(省|自治区|特别行政区)")
_CITY = re.compile(rf"{_NAME}(市|自治州|地区|盟)")
_DISTRICT = re.compile(rf"{_NAME}(区|县|市|旗)")


def _ascii_digits(text: str | None) -> str:
    text = text or ""
    return text.translate(_ASCII_DIGITS) if _WIDE_DIGIT.search(text) else text


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
    """Mask every mobile number (1[3-9] and nine more digits, +86 or not) in free text.

    Groups may be split by spaces, dashes or dots; full-width digits count as digits (and come out
    as ASCII ones).
    """
    return _mask_phones(_ascii_digits(text))


def _mask_phones(text: str) -> str:
    if not _MOBILE_HINT.search(text):
        return text
    return _MOBILE_IN_TEXT.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


def mask_id_numbers_in_text(text: str | None) -> str:
    """Mask resident ID numbers (18 digits or 17 and X, or the old 15) down to their province code."""
    return _mask_ids(_ascii_digits(text))


def _mask_ids(text: str) -> str:
    if not _ID_HINT.search(text):
        return text
    return _ID_NUMBER.sub(lambda m: m.group(1) + "*" * (m.end() - m.start() - 2), text)


def _mask_signer(m: re.Match) -> str:
    label, name = (m["label"], m["name"]) if m["label"] is not None else (m["bare_label"], m["bare_name"])
    return m.group(0) if _NOT_A_PERSON.search(name) else label + mask_name(name)


def _mask_person(m: re.Match) -> str:
    before = m.groupdict().get("before") or ""
    name = m["name"]
    if _NOT_A_PERSON.search(name) or _SURNAME_AND_TITLE.fullmatch(name):
        return m.group(0)
    return before + mask_name(name)


def mask_names_in_text(text: str | None) -> str:
    """Mask signers' and couriers' names: '签收人：张三丰' -> '签收人：张*', '快递员李四' -> '快递员李*'."""
    text = text or ""
    if "人" in text:
        text = _NAME_IN_TEXT.sub(_mask_signer, text)
    for pattern, words in _PERSON_PATTERNS:
        for word in words:
            if word in text:
                text = pattern.sub(_mask_person, text)
                break
    return text


@lru_cache(maxsize=4096)
def _street_of(address: str) -> tuple[re.Pattern[str], dict[str, tuple[int, ...]], str] | None:
    """What of `address` lies beyond the district (lower case, no spaces) and a pattern for its pieces.

    The pattern finds any _ADDRESS_SEED characters of it in a row, so that a carrier text repeating
    part of the street ("文三路100号", without the building) is found too; the dict gives where in the
    street each such piece starts, for the match to be followed both ways past spaces. Pieces of
    digits alone ("0000" of "10000号") are left out: they turn up in phone numbers and times. A
    plain alternation of literals compiles in microseconds, once per order.
    """
    compact = re.sub(r"\s+", "", _ascii_digits(address))
    street = compact[len(mask_address(compact)) :].lower()
    if len(street) < 3:
        return None
    size = min(_ADDRESS_SEED, len(street))
    starts: dict[str, list[int]] = {}
    for i in range(len(street) - size + 1):
        piece = street[i : i + size]
        if not piece.isdigit():
            starts.setdefault(piece, []).append(i)
    if not starts:
        return None
    # Ignoring case only where there are letters keeps the pattern one the regex engine can scan fast.
    flags = re.IGNORECASE if re.search("[a-z]", street) else 0
    pieces = re.compile("|".join(map(re.escape, starts)), flags)
    return pieces, {piece: tuple(at) for piece, at in starts.items()}, street


def _follows(text: str, at: int, step: int, street: str, i: int) -> int:
    """How far the text keeps following the street from text[at] and street[i], stepping by `step`.

    Spaces in the text are skipped; the result is the text position past the last character that
    matched (before it, when stepping backwards).
    """
    end = at
    while 0 <= i < len(street):
        pos = end if step > 0 else end - 1
        while 0 <= pos < len(text) and text[pos].isspace():
            pos += step
        if not 0 <= pos < len(text) or text[pos].lower() != street[i]:
            break
        end, i = (pos + 1, i + 1) if step > 0 else (pos, i - 1)
    return end


def mask_street_in_text(text: str | None, address: str | None) -> str:
    """Cut what lies beyond the district of `address` out of free text, wherever it is repeated.

    '已送达浙江省杭州市西湖区文三路100号5幢' with that address -> '已送达浙江省杭州市西湖区****'.
    """
    return _mask_street(_ascii_digits(text), address)


def _mask_street(text: str, address: str | None) -> str:
    found = _street_of(address) if address else None
    if found is None:
        return text
    pieces, starts, street = found
    out, pos = [], 0
    m = pieces.search(text)
    while m is not None:
        piece = m.group(0).lower()
        at = starts.get(piece, ())
        start = min((_follows(text, m.start(), -1, street, i - 1) for i in at), default=m.start())
        end = max((_follows(text, m.end(), 1, street, i + len(piece)) for i in at), default=m.end())
        start = max(start, pos)  # not back into what an earlier cut took
        run = "".join(text[start:end].split())
        if len(run) >= _ADDRESS_RUN or any(c.isdigit() for c in run):
            out += [text[pos:start], _ADDRESS_CUT]
            pos = end
        m = pieces.search(text, end)
    return "".join(out) + text[pos:]


def mask_carrier_text(text: str | None, *, address: str | None = None, name: str | None = None) -> str:
    """A carrier's free text as a customer may see it.

    Mobile and ID numbers, couriers' and signers' names are masked; given the order's ship address
    and recipient name, its street beyond the district is cut and the name masked wherever they appear.
    """
    if not text:
        return ""
    text = _mask_street(_ascii_digits(text), address)
    name = (name or "").strip()
    if len(name) >= 2 and name in text:
        text = text.replace(name, mask_name(name))
    return mask_names_in_text(_mask_phones(_mask_ids(text)))
