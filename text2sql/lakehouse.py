"""The embedded demo lakehouse: a retail company's analytics domain in a pyiceberg SqlCatalog.

`create_lakehouse(cfg)` builds, deterministically for a given seed and scale, a sqlite-backed
SqlCatalog with a local parquet warehouse under `lakehouse.path`:

    core.customers        dimension, bucket(8, customer_id), address struct
    core.products         dimension, identity(category), tags list<string>
    core.stores           dimension (retail, outlet and online channels)
    core.fiscal_calendar  one row per day; fiscal year starts 1 February, named for the year it ends in
    marketing.promotions  day(starts_on)
    sales.orders          fact, month(ordered_at), timestamptz
    sales.order_lines     fact, bucket(16, order_id), decimals
    sales.returns         fact, month(returned_at)

Snapshot ids and table UUIDs are drawn from the seed too (pyiceberg draws them from uuid4), so the
committed `schemas/manifest.json` pins snapshots that a fresh `lakehouse create` reproduces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import shutil
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from text2sql.errors import CatalogError
from text2sql.progress import progress_bar

if TYPE_CHECKING:
    from text2sql.config import Config

START = dt.date(2023, 2, 1)  # first day of FY2024
END = dt.date(2026, 1, 31)  # last day of FY2026
CENTS = Decimal("0.01")

FIRST_NAMES = ("Ava Liam Noah Emma Olivia Mia Lucas Amelia Ethan Sofia Mateo Isla Leo Chloe Omar Zara Hugo Nina "
               "Felix Maya Oscar Lena Arjun Priya Kenji Yuki Diego Lucia Jonas Freya Aisha Malik Elena Tomas "
               "Ines Rafael Hana Samuel Clara Victor").split()
LAST_NAMES = ("Smith Garcia Chen Muller Rossi Novak Kowalski Silva Tanaka Kim Patel Okafor Dubois Jensen Larsen "
              "Moreau Santos Costa Walsh Murphy Fischer Weber Ivanova Haddad Nguyen Schmidt Bauer Romano Lopez "
              "Andersen").split()
CITIES = (("Seattle", "US", "West"), ("Portland", "US", "West"), ("San Francisco", "US", "West"),
          ("Denver", "US", "West"), ("Chicago", "US", "North"), ("Minneapolis", "US", "North"),
          ("Detroit", "US", "North"), ("Boston", "US", "East"), ("New York", "US", "East"),
          ("Philadelphia", "US", "East"), ("Atlanta", "US", "South"), ("Austin", "US", "South"),
          ("Miami", "US", "South"), ("Dallas", "US", "South"), ("Toronto", "CA", "North"),
          ("Vancouver", "CA", "West"))
CATEGORIES = {
    "Apparel": ("Tops", "Bottoms", "Outerwear", "Footwear"),
    "Home": ("Kitchen", "Bedding", "Decor", "Storage"),
    "Electronics": ("Audio", "Accessories", "Wearables", "Smart Home"),
    "Beauty": ("Skincare", "Makeup", "Fragrance", "Hair"),
    "Sports": ("Fitness", "Outdoor", "Cycling", "Team Sports"),
    "Grocery": ("Snacks", "Beverages", "Pantry", "Coffee & Tea"),
}
BRANDS = ("Northwind", "Acme", "Lumen", "Pinecrest", "Harbor & Co", "Vela", "Kestrel", "Brightline",
          "Oakridge", "Solstice", "Tidal", "Summit")
PRICE_RANGE = {"Apparel": (12, 180), "Home": (8, 250), "Electronics": (15, 600), "Beauty": (6, 90),
               "Sports": (10, 400), "Grocery": (2, 30)}
RETURN_REASONS = ("damaged", "wrong_size", "not_as_described", "changed_mind", "late_delivery")
PAYMENT_METHODS = ("card", "card", "card", "paypal", "gift_card", "cash")
HOLIDAYS = {(1, 1): "New Year's Day", (7, 4): "Independence Day", (12, 25): "Christmas Day",
            (12, 24): "Christmas Eve", (12, 31): "New Year's Eve", (11, 11): "Veterans Day"}


def create_lakehouse(cfg: Config, scale: float | None = None, seed: int | None = None) -> dict[str, Any]:
    """Build the demo lakehouse under cfg.lakehouse.path, replacing any previous one.

    Returns:
        {"path": str, "seconds": float, "tables": {qualified name: row count}}
    """
    from pyiceberg.catalog.sql import SqlCatalog

    scale = cfg.lakehouse.scale if scale is None else scale
    seed = cfg.lakehouse.seed if seed is None else seed
    if scale <= 0:
        raise CatalogError(f"--scale must be positive, got {scale}")
    started = time.perf_counter()
    root = cfg.path(cfg.lakehouse.path)
    if root.exists():
        shutil.rmtree(root)
    (root / "warehouse").mkdir(parents=True)
    catalog = SqlCatalog("demo", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=(root / "warehouse").as_uri())

    rng = random.Random(seed)
    tables = _generate(rng, scale)
    counts = {}
    definitions = _table_definitions(tables)
    with _seeded_uuid4(seed), progress_bar("lakehouse", len(definitions), "tables") as advance:
        for ns in ("core", "marketing", "sales"):
            catalog.create_namespace(ns, {"comment": NAMESPACE_COMMENTS[ns]})
        for name, (schema, spec, props, rows) in definitions.items():
            table = catalog.create_table(name, schema=schema, partition_spec=spec, properties=props)
            # create_table assigns fresh field ids: build the Arrow data from the table's own schema.
            table.append(_to_arrow(table.schema(), rows))
            counts[name] = len(rows)
            advance(1)
    return {"path": str(root), "seconds": time.perf_counter() - started, "tables": counts}


NAMESPACE_COMMENTS = {
    "core": "Conformed dimensions shared by every subject area",
    "marketing": "Promotions and campaign reference data",
    "sales": "Order, order line and return facts",
}


@contextlib.contextmanager
def _seeded_uuid4(seed: int):
    """Make uuid.uuid4 (which pyiceberg uses for snapshot ids and table UUIDs) deterministic."""
    rng = random.Random(f"uuid-{seed}")
    original = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    try:
        yield
    finally:
        uuid.uuid4 = original


# ---------------------------------------------------------------- data


def _money(x: float) -> Decimal:
    return Decimal(str(round(x, 2))).quantize(CENTS)


def _fiscal(d: dt.date) -> tuple[int, int, int]:
    """(fiscal_year, fiscal_quarter, fiscal_month): FY starts 1 Feb and is named for the year it ends in."""
    fiscal_month = (d.month - 2) % 12 + 1
    fiscal_year = d.year + 1 if d.month >= 2 else d.year
    return fiscal_year, (fiscal_month - 1) // 3 + 1, fiscal_month


def _generate(rng: random.Random, scale: float) -> dict[str, list[dict]]:
    n_customers = max(50, int(5000 * scale))
    n_products = max(30, int(400 * scale))
    n_orders = max(200, int(40000 * scale))
    days = (END - START).days + 1

    calendar = []
    for i in range(days):
        d = START + dt.timedelta(days=i)
        fy, fq, fm = _fiscal(d)
        fy_start = dt.date(fy - 1, 2, 1)
        holiday = HOLIDAYS.get((d.month, d.day))
        calendar.append({
            "calendar_date": d, "fiscal_year": fy, "fiscal_quarter": fq, "fiscal_month": fm,
            "fiscal_week": (d - fy_start).days // 7 + 1, "day_of_week": d.strftime("%A"),
            "is_weekend": d.weekday() >= 5, "is_holiday": holiday is not None, "holiday_name": holiday,
        })

    stores = []
    for i, (city, country, region) in enumerate(CITIES, start=1):
        channel = "outlet" if i % 5 == 0 else "retail"
        stores.append({
            "store_id": i, "store_name": f"{city} {'Outlet' if channel == 'outlet' else 'Store'}",
            "channel": channel, "region": region, "city": city, "country": country,
            "opened_on": dt.date(2015 + i % 8, 1 + i % 12, 1 + (i * 7) % 28),
            "square_meters": rng.randrange(600, 4000, 50),
        })
    for j, (name, country) in enumerate((("Web Store US", "US"), ("Web Store CA", "CA"), ("Mobile App", "US"))):
        stores.append({
            "store_id": 100 + j, "store_name": name, "channel": "online", "region": "Online", "city": None,
            "country": country, "opened_on": dt.date(2018 + j, 3, 1), "square_meters": None,
        })

    products = []
    for i in range(1, n_products + 1):
        category = rng.choice(tuple(CATEGORIES))
        sub = rng.choice(CATEGORIES[category])
        lo, hi = PRICE_RANGE[category]
        price = round(rng.uniform(lo, hi), 0) - 0.01
        tags = sorted(rng.sample(("new", "bestseller", "eco", "limited", "clearance", "gift"), rng.randint(0, 2)))
        products.append({
            "product_id": i, "sku": f"{category[:3].upper()}-{i:05d}",
            "product_name": f"{rng.choice(BRANDS)} {sub} {rng.choice(('Classic', 'Pro', 'Lite', 'Max', 'Essential', 'Plus'))} {i}",
            "category": category, "subcategory": sub, "brand": rng.choice(BRANDS),
            "unit_cost": _money(price * rng.uniform(0.35, 0.65)), "list_price": _money(price),
            "launched_on": START - dt.timedelta(days=400) + dt.timedelta(days=rng.randrange(0, days + 300)),
            "is_active": rng.random() > 0.08, "tags": tags,
        })

    customers = []
    for i in range(1, n_customers + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, country, _ = rng.choice(CITIES)
        signup = START - dt.timedelta(days=700) + dt.timedelta(days=rng.randrange(0, days + 600))
        customers.append({
            "customer_id": i, "first_name": first, "last_name": last,
            "email": f"{first.lower()}.{last.lower()}{i}@example.com" if rng.random() > 0.03 else None,
            "segment": rng.choices(("consumer", "small_business", "enterprise"), (85, 12, 3))[0],
            "loyalty_tier": rng.choices(("none", "silver", "gold", "platinum"), (55, 25, 15, 5))[0],
            "signup_date": signup,
            "birth_date": dt.date(rng.randint(1950, 2005), rng.randint(1, 12), rng.randint(1, 28)) if rng.random() > 0.1 else None,
            "address": {"street": f"{rng.randint(1, 9999)} {rng.choice(('Oak', 'Main', 'Pine', 'Maple', 'Cedar', 'Elm'))} St",
                        "city": city, "postal_code": f"{rng.randint(10000, 99999)}", "country": country},
            "created_at": dt.datetime.combine(signup, dt.time(rng.randrange(24), rng.randrange(60)), dt.timezone.utc),
        })

    promotions = []
    for i in range(1, 41):
        start = START + dt.timedelta(days=rng.randrange(0, days - 30))
        promotions.append({
            "promotion_id": i, "promo_code": f"SAVE{i:02d}{rng.choice('ABCDEFGH')}",
            "promotion_name": f"{rng.choice(('Spring', 'Summer', 'Back to School', 'Holiday', 'Flash', 'Weekend', 'VIP'))} Sale {i}",
            "discount_pct": Decimal(rng.choice(("5.00", "10.00", "15.00", "20.00", "25.00", "30.00"))),
            "starts_on": start, "ends_on": start + dt.timedelta(days=rng.choice((3, 7, 14, 21, 30))),
            "channel": rng.choice(("all", "all", "online", "retail")),
            "budget": _money(rng.choice((5000, 10000, 25000, 50000)) * 1.0),
        })

    # Demand grows ~15 %/year and peaks in November/December.
    weights = [(1 + 0.15 * i / 365) * (1.8 if d["calendar_date"].month in (11, 12) else 1.0) * (1.2 if d["is_weekend"] else 1.0)
               for i, d in enumerate(calendar)]
    order_days = rng.choices(range(days), weights=weights, k=n_orders)
    order_days.sort()
    product_popularity = [rng.paretovariate(1.2) for _ in products]
    orders, lines, returns = [], [], []
    for order_id, day_index in enumerate(order_days, start=1):
        day = calendar[day_index]["calendar_date"]
        store = rng.choices(stores, weights=[3 if s["channel"] == "online" else 1 for s in stores])[0]
        ordered_at = dt.datetime.combine(day, dt.time(rng.randrange(7, 23), rng.randrange(60), rng.randrange(60)), dt.timezone.utc)
        live = [p for p in promotions if p["starts_on"] <= day <= p["ends_on"]
                and p["channel"] in ("all", "online" if store["channel"] == "online" else "retail")]
        promo = live[0] if live and rng.random() < 0.6 else None
        status = rng.choices(("completed", "cancelled", "pending"), (93, 5, 2) if day < END - dt.timedelta(days=10) else (60, 5, 35))[0]
        orders.append({
            "order_id": order_id, "customer_id": rng.randint(1, n_customers), "store_id": store["store_id"],
            "promotion_id": promo["promotion_id"] if promo else None, "ordered_at": ordered_at, "status": status,
            "payment_method": rng.choice(PAYMENT_METHODS) if store["channel"] != "online" else rng.choice(("card", "paypal", "gift_card")),
            "shipping_amount": _money(rng.choice((0, 4.99, 7.99, 12.99))) if store["channel"] == "online" else _money(0),
        })
        for line_number in range(1, 1 + min(8, max(1, int(rng.expovariate(1 / 2.9)) or 1))):
            product = rng.choices(products, weights=product_popularity)[0]
            quantity = rng.choices((1, 2, 3, 4, 6), (70, 18, 7, 3, 2))[0]
            gross = product["list_price"] * quantity
            discount = (gross * promo["discount_pct"] / 100).quantize(CENTS) if promo else Decimal("0.00")
            lines.append({
                "order_id": order_id, "line_number": line_number, "product_id": product["product_id"],
                "quantity": quantity, "unit_price": product["list_price"], "discount_amount": discount,
            })
            if status == "completed" and rng.random() < (0.12 if product["category"] == "Apparel" else 0.04):
                returned_qty = rng.randint(1, quantity)
                net_unit = (gross - discount) / quantity
                returned_at = ordered_at + dt.timedelta(days=rng.randint(2, 45), hours=rng.randrange(24))
                if returned_at.date() <= END:
                    returns.append({
                        "return_id": len(returns) + 1, "order_id": order_id, "line_number": line_number,
                        "product_id": product["product_id"], "returned_at": returned_at, "quantity": returned_qty,
                        "refund_amount": (net_unit * returned_qty).quantize(CENTS),
                        "reason": rng.choice(RETURN_REASONS) if product["category"] != "Apparel" else rng.choice(("wrong_size", "wrong_size", "not_as_described", "changed_mind", "damaged")),
                    })
    return {"customers": customers, "products": products, "stores": stores, "calendar": calendar,
            "promotions": promotions, "orders": orders, "lines": lines, "returns": returns}


# ---------------------------------------------------------------- schemas


def _table_definitions(data: dict[str, list[dict]]) -> dict[str, tuple]:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform, MonthTransform
    from pyiceberg.types import (BooleanType, DateType, DecimalType, IntegerType, ListType, LongType, NestedField,
                                 StringType, StructType, TimestamptzType)

    def schema(*cols, ids=()):
        fields, next_id = [], [1]

        def fid():
            next_id[0] += 1
            return next_id[0] - 1

        def build(name, typ, doc, required=False):
            if isinstance(typ, tuple) and typ[0] == "struct":
                my_id = fid()
                typ = StructType(*[build(*c) for c in typ[1]])
                return NestedField(my_id, name, typ, required=required, doc=doc)
            if isinstance(typ, tuple) and typ[0] == "list":
                my_id, elem_id = fid(), fid()
                return NestedField(my_id, name, ListType(elem_id, typ[1], element_required=True), required=required, doc=doc)
            return NestedField(fid(), name, typ, required=required, doc=doc)

        for col in cols:
            fields.append(build(*col))
        id_fields = [f.field_id for f in fields if f.name in ids]
        return Schema(*fields, identifier_field_ids=id_fields)

    def spec(sch, *parts):
        return PartitionSpec(*[
            PartitionField(source_id=sch.find_field(col).field_id, field_id=1000 + i, transform=t, name=name)
            for i, (col, t, name) in enumerate(parts)
        ])

    def props(comment, refs=()):
        p = {"comment": comment, "write.parquet.compression-codec": "zstd"}
        if refs:
            p["text2sql.references"] = ",".join(refs)
        return p

    money = DecimalType(10, 2)
    customers = schema(
        ("customer_id", LongType(), "Surrogate key of the customer", True),
        ("first_name", StringType(), "Given name"),
        ("last_name", StringType(), "Family name"),
        ("email", StringType(), "Contact email; NULL when the customer opted out of sharing it"),
        ("segment", StringType(), "Customer segment: consumer, small_business or enterprise", True),
        ("loyalty_tier", StringType(), "Loyalty programme tier: none, silver, gold or platinum", True),
        ("signup_date", DateType(), "Date the customer created an account", True),
        ("birth_date", DateType(), "Date of birth; NULL when not provided"),
        ("address", ("struct", [("street", StringType(), "Street and number"), ("city", StringType(), "City"),
                                ("postal_code", StringType(), "Postal code"), ("country", StringType(), "ISO country code")]),
         "Billing address"),
        ("created_at", TimestamptzType(), "When the customer record was created (UTC)", True),
        ids=("customer_id",),
    )
    products = schema(
        ("product_id", LongType(), "Surrogate key of the product", True),
        ("sku", StringType(), "Stock keeping unit code, unique per product", True),
        ("product_name", StringType(), "Display name", True),
        ("category", StringType(), "Top-level category: Apparel, Home, Electronics, Beauty, Sports or Grocery", True),
        ("subcategory", StringType(), "Subcategory within the category", True),
        ("brand", StringType(), "Brand name", True),
        ("unit_cost", money, "Cost of one unit to the company, USD", True),
        ("list_price", money, "Current list price of one unit, USD", True),
        ("launched_on", DateType(), "Date the product was first sold", True),
        ("is_active", BooleanType(), "False once the product is discontinued", True),
        ("tags", ("list", StringType()), "Merchandising tags such as new, bestseller, eco, clearance"),
        ids=("product_id",),
    )
    stores = schema(
        ("store_id", IntegerType(), "Surrogate key of the store or online channel", True),
        ("store_name", StringType(), "Display name", True),
        ("channel", StringType(), "Sales channel: retail, outlet or online", True),
        ("region", StringType(), "Sales region: North, South, East, West or Online", True),
        ("city", StringType(), "City of a physical store; NULL for online stores"),
        ("country", StringType(), "ISO country code", True),
        ("opened_on", DateType(), "Opening date", True),
        ("square_meters", IntegerType(), "Selling floor area; NULL for online stores"),
        ids=("store_id",),
    )
    calendar = schema(
        ("calendar_date", DateType(), "Calendar day", True),
        ("fiscal_year", IntegerType(), "Fiscal year; it starts on 1 February and is named for the calendar year it ends in (FY2025 = 2024-02-01..2025-01-31)", True),
        ("fiscal_quarter", IntegerType(), "Fiscal quarter 1-4 (Q1 = February-April)", True),
        ("fiscal_month", IntegerType(), "Fiscal month 1-12 (1 = February)", True),
        ("fiscal_week", IntegerType(), "Week of the fiscal year, 1-53, counted from 1 February", True),
        ("day_of_week", StringType(), "English day name, Monday..Sunday", True),
        ("is_weekend", BooleanType(), "Saturday or Sunday", True),
        ("is_holiday", BooleanType(), "A company-observed holiday", True),
        ("holiday_name", StringType(), "Name of the holiday; NULL on other days"),
        ids=("calendar_date",),
    )
    promotions = schema(
        ("promotion_id", IntegerType(), "Surrogate key of the promotion", True),
        ("promo_code", StringType(), "Code customers enter at checkout", True),
        ("promotion_name", StringType(), "Marketing name", True),
        ("discount_pct", DecimalType(5, 2), "Percentage taken off the line price, e.g. 15.00", True),
        ("starts_on", DateType(), "First day the promotion is valid", True),
        ("ends_on", DateType(), "Last day the promotion is valid (inclusive)", True),
        ("channel", StringType(), "Where it applies: all, online or retail", True),
        ("budget", DecimalType(12, 2), "Planned marketing budget, USD", True),
        ids=("promotion_id",),
    )
    orders = schema(
        ("order_id", LongType(), "Surrogate key of the order", True),
        ("customer_id", LongType(), "Customer who placed the order; references core.customers.customer_id", True),
        ("store_id", IntegerType(), "Store or online channel that took the order; references core.stores.store_id", True),
        ("promotion_id", IntegerType(), "Promotion applied to the order, NULL when none; references marketing.promotions.promotion_id"),
        ("ordered_at", TimestamptzType(), "When the order was placed (UTC)", True),
        ("status", StringType(), "Order status: completed, cancelled or pending. Only completed orders count as sales", True),
        ("payment_method", StringType(), "card, paypal, gift_card or cash", True),
        ("shipping_amount", money, "Shipping charged to the customer, USD (0 in stores)", True),
        ids=("order_id",),
    )
    lines = schema(
        ("order_id", LongType(), "Order this line belongs to; references sales.orders.order_id", True),
        ("line_number", IntegerType(), "Position of the line within the order, from 1", True),
        ("product_id", LongType(), "Product sold; references core.products.product_id", True),
        ("quantity", IntegerType(), "Units sold", True),
        ("unit_price", money, "Price of one unit at the time of sale, before discount, USD", True),
        ("discount_amount", money, "Total discount on the line (all units), USD", True),
        ids=("order_id", "line_number"),
    )
    returns = schema(
        ("return_id", LongType(), "Surrogate key of the return", True),
        ("order_id", LongType(), "Order the returned line belongs to; references sales.orders.order_id", True),
        ("line_number", IntegerType(), "Returned order line; with order_id references sales.order_lines", True),
        ("product_id", LongType(), "Product returned; references core.products.product_id", True),
        ("returned_at", TimestamptzType(), "When the return was received (UTC)", True),
        ("quantity", IntegerType(), "Units returned", True),
        ("refund_amount", money, "Amount refunded to the customer, USD", True),
        ("reason", StringType(), "damaged, wrong_size, not_as_described, changed_mind or late_delivery", True),
        ids=("return_id",),
    )
    return {
        "core.customers": (customers, spec(customers, ("customer_id", BucketTransform(8), "customer_id_bucket")),
                           props("One row per registered customer"), data["customers"]),
        "core.products": (products, spec(products, ("category", IdentityTransform(), "category")),
                          props("Product catalogue, one row per SKU"), data["products"]),
        "core.stores": (stores, PartitionSpec(), props("Physical stores, outlets and online storefronts"), data["stores"]),
        "core.fiscal_calendar": (calendar, PartitionSpec(), props("One row per calendar day with the retail fiscal calendar"), data["calendar"]),
        "marketing.promotions": (promotions, spec(promotions, ("starts_on", DayTransform(), "starts_on_day")),
                                 props("Discount promotions and their validity windows"), data["promotions"]),
        "sales.orders": (orders, spec(orders, ("ordered_at", MonthTransform(), "ordered_at_month")),
                         props("One row per customer order (header)",
                               ("customer_id->core.customers.customer_id", "store_id->core.stores.store_id",
                                "promotion_id->marketing.promotions.promotion_id")), data["orders"]),
        "sales.order_lines": (lines, spec(lines, ("order_id", BucketTransform(16), "order_id_bucket")),
                              props("One row per product line of an order",
                                    ("order_id->sales.orders.order_id", "product_id->core.products.product_id")), data["lines"]),
        "sales.returns": (returns, spec(returns, ("returned_at", MonthTransform(), "returned_at_month")),
                          props("One row per returned order line",
                                ("order_id->sales.orders.order_id", "line_number->sales.order_lines.line_number",
                                 "product_id->core.products.product_id")), data["returns"]),
    }


def _to_arrow(schema, rows: list[dict]):
    import pyarrow as pa

    arrow_schema = schema.as_arrow()
    return pa.Table.from_pylist(rows, schema=arrow_schema)
