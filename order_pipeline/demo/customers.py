"""The demo's customers: names, mobiles, ID numbers and addresses, one per order."""

from __future__ import annotations

import numpy as np

from order_pipeline.demo.random_data import concat_strings, mobile_numbers, yyyymmdd
from order_pipeline.demo.reference_data import CITIES, GIVEN_NAMES, SURNAMES


def draw_customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n customers: name, mobile, ID number (and whether the ERP has it), city and district indexes, address."""
    names = concat_strings(
        np.array(SURNAMES)[:, None, None],
        np.array(GIVEN_NAMES)[None, :, None],
        np.array(["", *GIVEN_NAMES])[None, None, :],
    )
    city = rng.integers(0, len(CITIES), n)
    district = rng.integers(0, 3, n)
    return {
        "name": names.ravel()[rng.integers(0, names.size, n)],
        "phone": mobile_numbers(rng, n),
        "id_card": _id_cards(rng, city, district),
        "with_id": rng.random(n) < 0.9,
        "city": city,
        "district": district,
        "address": _addresses(rng, city, district),
    }


def _addresses(rng: np.random.Generator, city: np.ndarray, district: np.ndarray) -> np.ndarray:
    """浙江省杭州市西湖区文三路123号, half of them with a unit such as 5幢1203室."""
    prefix = np.array([[[_place(c) + d + s for s in c[3]] for d in c[2]] for c in CITIES])
    n = len(city)
    number = rng.integers(1, 800, n).astype(str)
    unit = concat_strings(
        rng.integers(1, 30, n).astype(str),
        "幢",
        (rng.integers(1, 30, n) * 100 + rng.integers(1, 6, n)).astype(str),
        "室",
    )
    unit = np.where(rng.random(n) < 0.5, unit, "")
    return concat_strings(prefix[city, district, rng.integers(0, 3, n)], number, "号", unit)


def _id_cards(rng: np.random.Generator, city: np.ndarray, district: np.ndarray) -> np.ndarray:
    """18-character resident ID numbers with a valid ISO 7064 check character."""
    n = len(city)
    region = np.array([c[4] for c in CITIES])[city] * 100 + district + 2
    born = np.datetime64("1965-01-01") + rng.integers(0, 40 * 365, n).astype("timedelta64[D]")
    body = (region * 10**8 + yyyymmdd(born)) * 1000 + rng.integers(1, 1000, n)
    digits = body[:, None] // 10 ** np.arange(16, -1, -1) % 10
    weights = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
    check = np.array(list("10X98765432"))[(digits * weights).sum(axis=1) % 11]
    return np.strings.add(body.astype(str), check)


def _place(city: tuple) -> str:
    """浙江省杭州市, or 上海市 for a city that is its own province."""
    province, name = city[0], city[1]
    return name if province == name else province + name
