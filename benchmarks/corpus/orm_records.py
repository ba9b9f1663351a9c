"""Load rows from a database cursor into ORM-style model objects.

Shape: GC-bound object builder, with and without ``__slots__``.  A small
hand-rolled data mapper (the kind many services grow instead of a full
ORM) turns cursor rows (tuples) into model instances kept in identity
maps: ``Customer`` and ``LineItem`` declare ``__slots__``, ``Order`` does
not (it is the class people add attributes to).  Relationships go both
ways (``order.customer`` / ``customer.orders``, ``item.order`` /
``order.items``), so the object graph is full of reference cycles that
stay alive.  Then a report walks the graph.  At scale 1: 30k customers,
150k orders, 450k line items.

    python benchmarks/corpus/orm_records.py [--scale 1.0]
"""

import argparse
import random
from collections import defaultdict
from decimal import Decimal


class Customer:
    __slots__ = ("id", "name", "country", "orders")

    def __init__(self, id, name, country):
        self.id = id
        self.name = name
        self.country = country
        self.orders = []


class Order:
    def __init__(self, id, customer, status, created):
        self.id = id
        self.customer = customer
        self.status = status
        self.created = created
        self.items = []

    @property
    def total(self):
        return sum(item.amount for item in self.items)


class LineItem:
    __slots__ = ("id", "order", "sku", "qty", "price_cents")

    def __init__(self, id, order, sku, qty, price_cents):
        self.id = id
        self.order = order
        self.sku = sku
        self.qty = qty
        self.price_cents = price_cents

    @property
    def amount(self):
        return self.qty * self.price_cents


class Session:
    """Identity maps: one object per primary key."""

    def __init__(self):
        self.customers = {}
        self.orders = {}
        self.items = {}

    def load_customers(self, rows):
        for id, name, country in rows:
            self.customers[id] = Customer(id, name, country)

    def load_orders(self, rows):
        for id, customer_id, status, created in rows:
            customer = self.customers[customer_id]
            order = Order(id, customer, status, created)
            customer.orders.append(order)
            self.orders[id] = order

    def load_items(self, rows):
        for id, order_id, sku, qty, price_cents in rows:
            order = self.orders[order_id]
            item = LineItem(id, order, sku, qty, price_cents)
            order.items.append(item)
            self.items[id] = item


def cursor(table, n, rng, n_customers=0, n_orders=0):
    """Rows as a DB-API cursor yields them."""
    countries = ("DE", "FR", "US", "GB", "JP", "BR")
    statuses = ("new", "paid", "shipped", "returned")
    for i in range(n):
        if table == "customers":
            yield (i, f"Customer {i}", countries[i % 6])
        elif table == "orders":
            yield (i, rng.randrange(n_customers), statuses[i % 4], f"2024-{i % 12 + 1:02d}-01")
        else:
            yield (i, rng.randrange(n_orders), f"SKU{rng.randrange(5000):05d}",
                   rng.randrange(1, 5), rng.randrange(99, 99_999))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    nc = max(5, int(30_000 * args.scale))
    no = nc * 5
    ni = no * 3
    rng = random.Random(17)
    s = Session()
    s.load_customers(cursor("customers", nc, rng))
    s.load_orders(cursor("orders", no, rng, n_customers=nc))
    s.load_items(cursor("items", ni, rng, n_orders=no))
    revenue = defaultdict(int)
    for c in s.customers.values():
        for o in c.orders:
            if o.status != "returned":
                revenue[c.country] += o.total
    best = max(revenue, key=revenue.get)
    print(f"orm_records: {len(s.customers)} customers, {len(s.orders)} orders, "
          f"{len(s.items)} items, top {best} {Decimal(revenue[best]) / 100:.2f}")


if __name__ == "__main__":
    main()
