"""Carrier event text as a customer sees it: Kuaidi100 `context` and `areaName` lines of real shapes,
each with the exact masked text. The order is shipped to ADDRESS for RECIPIENT; the couriers, signers
and ID numbers in the lines are other people's."""

from __future__ import annotations

import pytest

from order_pipeline.domain.masking import mask_carrier_text

ADDRESS = "浙江省杭州市西湖区文三路100号5幢"
RECIPIENT = "陈小春"

CASES = [
    # mobile numbers, however they are written
    ("派件员电话135.1234.5678，请保持电话畅通", "派件员电话135****5678，请保持电话畅通"),
    ("快递员手机：１３６１２３４５６７８，请保持电话畅通", "快递员手机：136****5678，请保持电话畅通"),
    ("快递员电话：１３８－１２３４－５６７８", "快递员电话：138****5678"),
    ("【杭州西湖区营业部】快递员电话 +86 137 1234 5678", "【杭州西湖区营业部】快递员电话 137****5678"),
    # ID numbers: 18 digits (with the X check digit) and the old 15
    ("收件人身份证号330106199001011234已核验", "收件人身份证号33****************已核验"),
    ("代收人证件号：11010519491231002X，已登记", "代收人证件号：11****************，已登记"),
    ("代收人身份证 330106900101123 已登记", "代收人身份证 33************* 已登记"),
    # the order's own street address, beyond the district
    ("快件已送达浙江省杭州市西湖区文三路100号5幢，请查收", "快件已送达浙江省杭州市西湖区****，请查收"),
    ("派送地址：西湖区 文三路１００号 5幢", "派送地址：西湖区 ****"),
    ("已投递至文三路100号门卫室", "已投递至****门卫室"),
    (
        "您的快件已到达【菜鸟驿站】文三路100号5幢南门店，取件码 5-2-3011，联系电话 0571-86001234",
        "您的快件已到达【菜鸟驿站】****南门店，取件码 5-2-3011，联系电话 0571-86001234",
    ),
    ("【杭州文三路营业部】快件已到达", "【杭州文三路营业部】快件已到达"),
    # names in the carriers' phrasings
    ("您的快件已由张三丰代收，如有疑问请联系快递员", "您的快件已由张*代收，如有疑问请联系快递员"),
    ("快递员张三正在为您派件", "快递员张*正在为您派件"),
    (
        "【杭州西湖区营业部】派件员：李四，电话：13912345678",
        "【杭州西湖区营业部】派件员：李*，电话：139****5678",
    ),
    ("已签收，签收人：王五，感谢使用中通快递", "已签收，签收人：王*，感谢使用中通快递"),
    ("张三已签收，感谢使用圆通速递", "张*已签收，感谢使用圆通速递"),
    ("欧阳娜娜已签收", "欧*已签收"),
    ("快递员张三已将快件放在家门口", "快递员张*已将快件放在家门口"),
    ("快递员王正华派件中，电话17712345678", "快递员王*派件中，电话177****5678"),
    ("揽收员：刘德华（13800138000）已揽收", "揽收员：刘*（138****8000）已揽收"),
    ("尊敬的陈小春，您的快件已放入丰巢柜", "尊敬的陈*，您的快件已放入丰巢柜"),
    # no person named: nothing to mask
    ("您的快件已签收，本人签收", "您的快件已签收，本人签收"),
    ("已签收，签收人：家门口", "已签收，签收人：家门口"),
    ("包裹已签收，签收人：门卫", "包裹已签收，签收人：门卫"),
    ("快件已由丰巢代收", "快件已由丰巢代收"),
    ("派送员马上到，请保持电话畅通", "派送员马上到，请保持电话畅通"),
    ("快递员小王正在派送", "快递员小王正在派送"),
    ("快递员于今日派送，请留意", "快递员于今日派送，请留意"),
    ("快递员来电，无人接听", "快递员来电，无人接听"),
    ("快递员 赵师傅 18812345678 正在派送", "快递员 赵师傅 188****5678 正在派送"),
    # company hotlines, outlet landlines, waybills, order numbers, dates and pickup codes stay
    ("如有疑问请拨打顺丰客服热线95338", "如有疑问请拨打顺丰客服热线95338"),
    ("中通客服400-827-0270，网点电话0571-88886666", "中通客服400-827-0270，网点电话0571-88886666"),
    ("2026-11-25 13:59:59 快件已揽收，运单号SF1398765432101", "2026-11-25 13:59:59 快件已揽收，运单号SF1398765432101"),
    ("运单号 432198765432101 已揽收", "运单号 432198765432101 已揽收"),
    ("订单号 123456789012345678 已出库", "订单号 123456789012345678 已出库"),
    ("快件已放至丰巢智能柜，取件码12345678", "快件已放至丰巢智能柜，取件码12345678"),
    ("【杭州转运中心】已发出，下一站【杭州西湖区营业部】", "【杭州转运中心】已发出，下一站【杭州西湖区营业部】"),
    # areaName, masked the same way
    ("浙江省杭州市西湖区", "浙江省杭州市西湖区"),
    ("杭州市西湖区文三路100号5幢", "杭州市西湖区****"),
    ("浙江,杭州市,西湖区", "浙江,杭州市,西湖区"),
]


@pytest.mark.parametrize("raw, masked", CASES)
def test_carrier_text_as_the_customer_sees_it(raw, masked):
    assert mask_carrier_text(raw, address=ADDRESS, name=RECIPIENT) == masked


@pytest.mark.parametrize("raw, masked", CASES)
def test_masking_is_idempotent(raw, masked):
    assert mask_carrier_text(masked, address=ADDRESS, name=RECIPIENT) == masked


def test_without_the_order_only_the_generic_rules_apply():
    text = "快件已送达文三路100号5幢，快递员张三１３６１２３４５６７８"
    assert mask_carrier_text(text) == "快件已送达文三路100号5幢，快递员张*136****5678"


@pytest.mark.parametrize(
    "address, text, masked",
    [
        ("广东省深圳市南山区科技园南区深南大道10000号腾讯大厦8楼", "已送至深南大道 10000号", "已送至****"),
        ("北京市朝阳区建国路88号SOHO现代城", "放在soho现代城前台", "放在****前台"),
        ("123 Main Street, Springfield", "Delivered to 123 Main Street", "Delivered to ****"),
        (
            "广东省深圳市南山区深南大道10000号",
            "快递员 +86 139 8765 0000，10000号已送达",
            "快递员 139****0000，****已送达",
        ),
        ("广东省深圳市南山区科技园路123号5栋", "【深圳科技园路营业部】已收取快件", "【深圳科技园路营业部】已收取快件"),
        ("广东省深圳市南山区科技园路123号5栋", "已送至科技园路 123号", "已送至****"),
        ("广东省深圳市南山区科技园南区深南大道10000号腾讯大厦8楼", "腾讯大厦前台已代收", "腾讯大厦前台已代收"),
        ("上海市", "快件到达上海市", "快件到达上海市"),
        ("", "快件到达上海市", "快件到达上海市"),
    ],
)
def test_the_order_address_is_cut_wherever_it_appears(address, text, masked):
    assert mask_carrier_text(text, address=address) == masked
