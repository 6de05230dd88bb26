"""The demo shop's catalog: products with prices in EUR, and the bundles they are bought in."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_CENT = Decimal("0.01")
_SHOP = "https://shop.example.com"


@dataclass(frozen=True, slots=True)
class Product:
    """A catalog entry; consumables (`refill_days`) are bought again about that often."""

    sku: str
    name: str
    category: str
    price: Decimal  # in EUR; other currencies are converted with `price_in`
    refill_days: int | None = None

    def price_in(self, currency: str) -> Decimal:
        return (self.price * _RATES[currency]).quantize(_CENT)


@dataclass(frozen=True, slots=True)
class Bundle:
    """Products bought together: one of the anchors, then each extra with its probability."""

    name: str
    anchors: tuple[str, ...]
    extras: tuple[tuple[str, float], ...]
    weight: float  # how often an order is this bundle, relative to the other bundles


def _product(sku: str, name: str, category: str, price: str, refill: int | None = None) -> Product:
    return Product(sku, name, category, Decimal(price), refill)


_RATES = {"EUR": Decimal(1), "USD": Decimal("1.08"), "GBP": Decimal("0.86")}
PRODUCTS: tuple[Product, ...] = (
    _product("LAP-14", 'Laptop Air 14"', "computers", "899.00"),
    _product("LAP-16", 'Laptop Pro 16"', "computers", "1499.00"),
    _product("BAG-LAP", "Laptop bag", "computers", "49.90"),
    _product("MOU-WL", "Wireless mouse", "computers", "29.90"),
    _product("KEY-WL", "Wireless keyboard", "computers", "59.90"),
    _product("DOCK-C", "USB-C dock", "computers", "119.00"),
    _product("MON-27", '27" monitor', "computers", "279.00"),
    _product("PHN-X", "Smartphone X", "phones", "699.00"),
    _product("PHN-L", "Smartphone Lite", "phones", "349.00"),
    _product("CASE-PH", "Phone case", "phones", "19.90"),
    _product("CHG-65", "65 W charger", "phones", "34.90"),
    _product("SCR-PH", "Screen protector", "phones", "12.90"),
    _product("EAR-BT", "Bluetooth earbuds", "audio", "129.00"),
    _product("PWR-20", "Power bank 20,000 mAh", "phones", "39.90"),
    _product("TAB-11", 'Tablet 11"', "tablets", "449.00"),
    _product("CASE-TAB", "Tablet cover", "tablets", "39.90"),
    _product("PEN-TAB", "Stylus", "tablets", "89.00"),
    _product("COF-MAC", "Espresso machine", "coffee", "549.00"),
    _product("COF-GRN", "Coffee grinder", "coffee", "129.00"),
    _product("COF-MLK", "Milk frother", "coffee", "69.00"),
    _product("COF-CUP", "Espresso cups, set of 6", "coffee", "24.90"),
    _product("COF-BEAN", "Coffee beans 1 kg", "coffee", "16.90", 30),
    _product("COF-DESC", "Descaler", "coffee", "9.90", 90),
    _product("COF-FLT", "Water filter", "coffee", "12.90", 60),
    _product("PRN-LAS", "Laser printer", "office", "229.00"),
    _product("PRN-TON", "Toner cartridge", "office", "79.90", 75),
    _product("PAP-A4", "Copy paper A4, 500 sheets", "office", "6.90", 30),
    _product("CAM-MIR", "Mirrorless camera", "cameras", "1099.00"),
    _product("CAM-50", "50 mm lens", "cameras", "329.00"),
    _product("CAM-SD", "SD card 128 GB", "cameras", "24.90"),
    _product("CAM-BAG", "Camera bag", "cameras", "59.90"),
    _product("TV-55", '55" television', "tv", "649.00"),
    _product("TV-MNT", "TV wall mount", "tv", "49.90"),
    _product("SND-BAR", "Soundbar", "audio", "249.00"),
    _product("HDMI-2", "HDMI cable 2 m", "tv", "12.90"),
    _product("VAC-ROB", "Robot vacuum", "home", "399.00"),
    _product("VAC-BAG", "Vacuum bags, pack of 10", "home", "14.90", 60),
    _product("VAC-BR", "Replacement brushes", "home", "19.90"),
    _product("KTL-17", "Electric kettle", "home", "39.90"),
    _product("BAT-AA", "AA batteries, 12-pack", "home", "8.90"),
)
_BY_SKU: dict[str, Product] = {p.sku: p for p in PRODUCTS}
BUNDLES: tuple[Bundle, ...] = (
    Bundle(
        "laptop",
        ("LAP-14", "LAP-16"),
        (("BAG-LAP", 0.7), ("MOU-WL", 0.6), ("DOCK-C", 0.25), ("KEY-WL", 0.2), ("MON-27", 0.15)),
        3,
    ),
    Bundle(
        "phone",
        ("PHN-X", "PHN-L"),
        (("CASE-PH", 0.75), ("CHG-65", 0.5), ("SCR-PH", 0.45), ("EAR-BT", 0.2)),
        3,
    ),
    Bundle(
        "coffee",
        ("COF-MAC",),
        (
            ("COF-BEAN", 0.8),
            ("COF-DESC", 0.6),
            ("COF-FLT", 0.4),
            ("COF-MLK", 0.3),
            ("COF-CUP", 0.25),
        ),
        2,
    ),
    Bundle("tablet", ("TAB-11",), (("CASE-TAB", 0.7), ("PEN-TAB", 0.4)), 1.5),
    Bundle("printer", ("PRN-LAS",), (("PAP-A4", 0.8), ("PRN-TON", 0.5)), 1),
    Bundle("camera", ("CAM-MIR",), (("CAM-SD", 0.8), ("CAM-BAG", 0.6), ("CAM-50", 0.4)), 1),
    Bundle("tv", ("TV-55",), (("HDMI-2", 0.6), ("TV-MNT", 0.5), ("SND-BAR", 0.35)), 1),
    Bundle("vacuum", ("VAC-ROB",), (("VAC-BAG", 0.5), ("VAC-BR", 0.3)), 1),
)
_ANCHORS = {sku: bundle for bundle in BUNDLES for sku in bundle.anchors}
_LOOSE = tuple(p.sku for p in PRODUCTS if p.sku not in _ANCHORS)  # bought on their own
_EVERYDAY = tuple(s for s in _LOOSE if _BY_SKU[s].refill_days or _BY_SKU[s].price < 40)
_BUNDLE_WEIGHTS = tuple(b.weight for b in BUNDLES)


def _product_url(product: Product) -> tuple[str, str | None]:
    return f"{_SHOP}/p/{product.sku.lower()}", product.sku
