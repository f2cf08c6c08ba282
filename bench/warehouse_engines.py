"""DuckDB over Iceberg: the materialized engine vs DuckDB's iceberg extension, in one run.

    python bench/warehouse_engines.py [--repeat 5] [--smoke]

Measures, on the project's lakehouse at the snapshot pinned in schemas/: the time to a first query
(materialization included for `materialized`, built from scratch), and the median latency of a set of
representative analytics queries. Prints ratios iceberg/materialized; writes bench/results/warehouse_engines.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

QUERIES = {
    "count": "SELECT count(*) FROM sales.order_lines",
    "join_agg": ("SELECT s.region, sum(l.quantity * l.unit_price - l.discount_amount) FROM sales.orders o "
                 "JOIN sales.order_lines l ON l.order_id = o.order_id JOIN core.stores s ON s.store_id = o.store_id "
                 "WHERE o.status = 'completed' GROUP BY 1"),
    "date_filter": ("SELECT date_trunc('month', ordered_at) m, count(*) FROM sales.orders "
                    "WHERE ordered_at >= TIMESTAMPTZ '2025-01-01' GROUP BY 1 ORDER BY 1"),
    "window": ("SELECT customer_id, order_id, row_number() OVER (PARTITION BY customer_id ORDER BY ordered_at) "
               "FROM sales.orders QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY ordered_at) = 1"),
    "returns": ("SELECT p.category, sum(r.refund_amount) FROM sales.returns r JOIN core.products p "
                "ON p.product_id = r.product_id GROUP BY 1"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one repetition, no result file")
    args = parser.parse_args()

    from text2sql.config import load_config
    from text2sql.warehouse import WarehouseSpec, open_connection

    repeat = 1 if args.smoke else args.repeat
    runs = {}
    for engine in ("materialized", "iceberg"):
        cfg = load_config(args.config, [f"warehouse.engine={engine}", "warehouse.cache_dir=.cache/bench-warehouse"])
        shutil.rmtree(cfg.path(cfg.warehouse.cache_dir), ignore_errors=True)
        started = time.perf_counter()
        con = open_connection(WarehouseSpec.from_config(cfg), threads=1)
        con.execute(QUERIES["count"]).fetchall()
        first = time.perf_counter() - started
        latencies = {}
        for name, sql in QUERIES.items():
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                con.execute(sql).fetchall()
                times.append(time.perf_counter() - t)
            latencies[name] = statistics.median(times)
        started = time.perf_counter()
        open_connection(WarehouseSpec.from_config(cfg), threads=1).execute(QUERIES["count"]).fetchall()
        warm_open = time.perf_counter() - started
        runs[engine] = {"first_query_s": first, "warm_open_s": warm_open, "median_query_s": latencies,
                        "total_query_s": sum(latencies.values())}
        shutil.rmtree(cfg.path(cfg.warehouse.cache_dir), ignore_errors=True)

    m, i = runs["materialized"], runs["iceberg"]
    print(f"{'':14s} {'materialized':>13s} {'iceberg':>10s} {'ratio i/m':>10s}")
    print(f"{'first query':14s} {m['first_query_s']:13.3f} {i['first_query_s']:10.3f} {i['first_query_s'] / m['first_query_s']:10.2f}")
    print(f"{'warm open':14s} {m['warm_open_s']:13.3f} {i['warm_open_s']:10.3f} {i['warm_open_s'] / m['warm_open_s']:10.2f}")
    for name in QUERIES:
        a, b = m["median_query_s"][name], i["median_query_s"][name]
        print(f"{name:14s} {a * 1000:11.1f}ms {b * 1000:8.1f}ms {b / a:10.2f}")
    ratio = i["total_query_s"] / m["total_query_s"]
    print(f"query time ratio iceberg/materialized: {ratio:.2f}x")
    if not args.smoke:
        import datetime as dt
        import platform

        out = Path(__file__).parent / "results" / "warehouse_engines.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                                   "runs": runs, "query_ratio_iceberg_over_materialized": ratio}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
