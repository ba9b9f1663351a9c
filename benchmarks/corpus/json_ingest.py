"""Ingest a day of API responses: parse JSON documents and keep the records.

Shape: GC-bound object builder.  A batch job reads newline-delimited JSON
(here generated with a seed: order documents with nested customer, address
and line-item objects), parses every line with ``json.loads`` into dicts
and lists, normalises them a little (flattened keys, parsed amounts) and
keeps everything: a list of records plus an index by customer and by
country.  Every parsed container is GC-tracked and survives, so the young
and old collections keep scanning a heap with no garbage in it.  At
scale 1: 80k documents.

    python benchmarks/corpus/json_ingest.py [--scale 1.0]
"""

import argparse
import json
import random
from collections import defaultdict

COUNTRIES = ["DE", "FR", "US", "GB", "JP", "BR", "IN", "ES", "IT", "NL"]
SKUS = [f"SKU-{i:05d}" for i in range(2000)]


def fetch_pages(n, rng):
    """The export, one JSON document per line (what the API returns)."""
    for i in range(n):
        items = [{"sku": SKUS[rng.randrange(len(SKUS))], "qty": rng.randrange(1, 6),
                  "unit_price": f"{rng.uniform(1, 300):.2f}"}
                 for _ in range(rng.randrange(1, 6))]
        doc = {"id": f"ord_{i:08d}", "status": "paid" if i % 7 else "refunded",
               "customer": {"id": f"cus_{rng.randrange(n // 4 + 1):07d}",
                            "email": f"user{i}@example.com",
                            "address": {"country": COUNTRIES[i % len(COUNTRIES)],
                                        "city": f"city{i % 500}", "zip": f"{i % 99999:05d}"}},
                "items": items, "tags": ["web"] if i % 3 else ["app", "promo"],
                "created": 1_700_000_000 + i * 3}
        yield json.dumps(doc)


def normalise(doc):
    cust = doc.pop("customer")
    doc["customer_id"] = cust["id"]
    doc["country"] = cust["address"]["country"]
    doc["contact"] = cust
    total = 0.0
    for item in doc["items"]:
        item["unit_price"] = float(item["unit_price"])
        item["amount"] = item["qty"] * item["unit_price"]
        total += item["amount"]
    doc["total"] = round(total, 2)
    return doc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(20, int(80_000 * args.scale))
    rng = random.Random(3)
    records = []
    by_customer = defaultdict(list)
    by_country = defaultdict(list)
    for line in fetch_pages(n, rng):
        rec = normalise(json.loads(line))
        records.append(rec)
        by_customer[rec["customer_id"]].append(rec)
        by_country[rec["country"]].append(rec)
    revenue = {c: round(sum(r["total"] for r in rs if r["status"] == "paid"), 2)
               for c, rs in sorted(by_country.items())}
    best = max(revenue, key=revenue.get)
    print(f"json_ingest: {len(records)} orders, {len(by_customer)} customers, "
          f"top country {best} {revenue[best]:.2f}")


if __name__ == "__main__":
    main()
