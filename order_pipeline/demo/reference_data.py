"""The fixed lists the demo company draws from: cities, warehouses, carriers, names and signers."""

from __future__ import annotations

import numpy as np

# (province, city, districts, streets, first four digits of the ID-card region code)
CITIES = (
    ("浙江省", "杭州市", ("西湖区", "拱墅区", "滨江区"), ("文三路", "莫干山路", "江南大道"), 3301),
    ("上海市", "上海市", ("浦东新区", "徐汇区", "静安区"), ("张江路", "漕溪北路", "南京西路"), 3101),
    ("北京市", "北京市", ("朝阳区", "海淀区", "东城区"), ("建国路", "中关村大街", "东直门内大街"), 1101),
    ("广东省", "广州市", ("天河区", "越秀区", "海珠区"), ("天河路", "中山五路", "新港中路"), 4401),
    ("广东省", "深圳市", ("南山区", "福田区", "宝安区"), ("科技园路", "深南大道", "宝安大道"), 4403),
    ("江苏省", "南京市", ("鼓楼区", "玄武区", "建邺区"), ("中山路", "珠江路", "江东中路"), 3201),
    ("江苏省", "苏州市", ("姑苏区", "吴中区", "相城区"), ("人民路", "东吴北路", "阳澄湖大道"), 3205),
    ("四川省", "成都市", ("武侯区", "锦江区", "青羊区"), ("人民南路", "春熙路", "蜀都大道"), 5101),
    ("湖北省", "武汉市", ("武昌区", "江汉区", "洪山区"), ("中南路", "解放大道", "珞喻路"), 4201),
    ("陕西省", "西安市", ("雁塔区", "碑林区", "未央区"), ("小寨西路", "南大街", "凤城八路"), 6101),
    ("福建省", "厦门市", ("思明区", "湖里区", "集美区"), ("中山路", "湖滨北路", "杏林湾路"), 3502),
    ("山东省", "青岛市", ("市南区", "崂山区", "李沧区"), ("香港中路", "海尔路", "京口路"), 3702),
    ("湖南省", "长沙市", ("岳麓区", "芙蓉区", "天心区"), ("麓山南路", "五一大道", "芙蓉中路"), 4301),
    ("天津市", "天津市", ("和平区", "南开区", "河西区"), ("南京路", "鞍山西道", "友谊路"), 1201),
    ("重庆市", "重庆市", ("渝中区", "江北区", "南岸区"), ("民族路", "建新北路", "南坪西路"), 5001),
)
WAREHOUSES = ((0, "余杭区"), (3, "白云区"), (7, "双流区"))  # (city index, district) of each shipping warehouse

# (Kuaidi100 code, name, waybill prefix, leading digits, further digits, share of parcels)
CARRIERS = (
    ("shunfeng", "顺丰速运", "SF", 1, 12, 0.22),  # SF1234567890123
    ("zhongtong", "中通快递", "", 75, 12, 0.25),  # 75123456789012
    ("yuantong", "圆通速递", "YT", 8, 12, 0.18),  # YT8123456789012
    ("yunda", "韵达快递", "", 43, 11, 0.15),  # 4312345678901
    ("jd", "京东快递", "JDVA", 2, 10, 0.12),  # JDVA21234567890
    ("ems", "EMS", "", 98, 11, 0.08),  # 9812345678901
)
CARRIER_CODE = np.array([c[0] for c in CARRIERS])  # by carrier index, for rendering whole arrays at once
WAYBILL_STEP = 2_654_435_761  # coprime with 10: spreads waybill numbers without repeating one

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹")
GIVEN_NAMES = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚华玉萍红玲芬燕彬鹏辉浩宇轩涵欣怡墨诺晨阳")
SIGNERS = ("本人", "家人", "同事", "前台", "门卫", "快递柜", "菜鸟驿站")


def waybill_numbers(carrier: np.ndarray, serial: np.ndarray) -> np.ndarray:
    """Waybill numbers in each carrier's format; distinct serials give distinct numbers."""
    scale = 10 ** np.array([c[4] for c in CARRIERS])[carrier]
    number = np.array([c[3] for c in CARRIERS])[carrier] * scale + serial * WAYBILL_STEP % scale
    return np.strings.add(np.array([c[2] for c in CARRIERS])[carrier], number.astype(str))
