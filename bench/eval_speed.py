"""Evaluation speed: pairs/s of the evaluator vs a plain baseline, on the demo lakehouse and a Spider slice.

    python bench/eval_speed.py [--pairs 3000] [--baseline-pairs 400] [--workers N]
    python bench/eval_speed.py --smoke      # seconds: ~100 pairs, no result file

Gold as prediction: a dataset's pairs are repeated up to --pairs (ids suffixed #k, SQL prefixed by a comment
so that every copy is a distinct query), and each gold SQL is also the prediction, so every example must come
out correct (the run fails loudly otherwise). Three ways to score, in one run:

- baseline: sequential, no cache, a new DuckDB connection per query (what a simple evaluator script does),
  timed on the first --baseline-pairs pairs;
- cold: `score_pairs` with an empty gold cache (sandboxed worker processes in parallel, checked SQL, gold SQL
  run once per distinct query, hard timeouts);
- warm: `score_pairs` again, with the gold results now cached on disk.

Targets: the project's demo lakehouse (datasets/demo) and a Spider slice: a dataset under datasets/ whose
dataset.yaml lists DuckDB databases, or else the Spider sample in shared/data, imported into a temp dir with
`text2sql.data.import_spider` (golds kept only when their DuckDB result matches SQLite's).
Writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "eval_speed.json"
SPIDER_SAMPLES = [REPO / "shared" / "data" / "spider-sample", REPO.parent / "shared" / "data" / "spider-sample"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="project config (default: the repo's text2sql.yaml)")
    parser.add_argument("--pairs", type=int, default=3000, help="pairs scored per target")
    parser.add_argument("--baseline-pairs", type=int, default=400, help="pairs the slow baseline is timed on")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per CPU core)")
    parser.add_argument("--smoke", action="store_true", help="~100 pairs per target, no result file")
    args = parser.parse_args()
    if args.smoke:
        args.pairs, args.baseline_pairs = 100, 20

    from text2sql.config import load_config

    cfg = load_config(args.config or REPO / "text2sql.yaml")
    results = {
        "pairs": args.pairs, "baseline_pairs": args.baseline_pairs, "workers": args.workers or os.cpu_count(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        tmp = Path(tmp)
        targets = {"demo": (_read_pairs(cfg, "demo"), "demo")}
        targets["spider"] = _spider(cfg, tmp)
        for name, (pairs, dataset) in targets.items():
            print(f"{name}: {len(pairs)} distinct pairs, scoring {args.pairs}", flush=True)
            results["targets"][name] = _bench(cfg, pairs, dataset, args, tmp / f"gold-{name}")
    for name, r in results["targets"].items():
        print(f"{name:7s} baseline {r['baseline']['pairs_per_s']:8.1f} pairs/s   "
              f"cold {r['cold']['pairs_per_s']:8.1f} pairs/s ({r['speedup_cold']:.1f}x)   "
              f"warm {r['warm']['pairs_per_s']:8.1f} pairs/s ({r['speedup_warm']:.1f}x)")
    # Other work on the machine slows every run (the parallel ones most): the load says how busy it was.
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp_file = RESULTS.with_suffix(".json.tmp")
        tmp_file.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp_file, RESULTS)
        print(f"wrote {RESULTS.relative_to(REPO)}")


def _bench(cfg, pairs: list, dataset: str, args, cache_dir: Path) -> dict:
    from text2sql.evaluate import score_pairs

    # Each copy's SQL differs by a comment, so that no copy reuses another's gold result or parse: the figures
    # are those of a dataset of that many distinct pairs.
    repeated = [dataclasses.replace(p, id=f"{p.id}#{k}", sql=f"/* copy {k} */ {p.sql}")
                for k in range(-(-args.pairs // len(pairs))) for p in pairs][: args.pairs]
    predictions = {p.id: p.sql for p in repeated}
    timings = {"baseline": _baseline(cfg, repeated[: args.baseline_pairs], dataset)}
    for run in ("cold", "warm"):
        started = time.perf_counter()
        scored = score_pairs(cfg, repeated, predictions, dataset=dataset, workers=args.workers or None,
                             cache_dir=cache_dir)
        seconds = time.perf_counter() - started
        wrong = [e for e in scored.examples if e["verdict"] != "correct"]
        if wrong:
            sys.exit(f"gold-as-prediction was not correct for {wrong[0]['id']}: {wrong[0]['reason']}")
        timings[run] = {"pairs": len(repeated), "seconds": round(seconds, 3),
                        "pairs_per_s": round(len(repeated) / seconds, 1),
                        "ex": len(scored.examples) and round(1 - len(wrong) / len(scored.examples), 4),
                        "gold_excluded": len(scored.excluded)}
    base = timings["baseline"]["pairs_per_s"]
    return {
        "distinct_pairs": len(pairs), **timings,
        "speedup_cold": round(timings["cold"]["pairs_per_s"] / base, 2),
        "speedup_warm": round(timings["warm"]["pairs_per_s"] / base, 2),
    }


def _baseline(cfg, pairs: list, dataset: str) -> dict:
    """Sequential, no cache, a new connection per query; compared in strict mode like the real run."""
    from text2sql.data import load_dataset
    from text2sql.evaluate import ResultSet, compare_results
    from text2sql.warehouse import WarehouseSpec, open_connection

    specs = {}

    def spec(db):
        if db not in specs:
            specs[db] = WarehouseSpec.from_config(cfg) if db is None else WarehouseSpec.from_duckdb_file(
                load_dataset(cfg, dataset).database(db))
        return specs[db]

    def run(db, sql):
        con = open_connection(spec(db), cfg.warehouse.memory_limit, cfg.warehouse.threads)
        try:
            cursor = con.execute(sql)
            return ResultSet([d[0] for d in cursor.description], cursor.fetchmany(cfg.warehouse.max_rows + 1))
        except Exception:
            return None
        finally:
            con.close()

    for p in pairs[:1]:  # open each spec once outside the timing (materialization of the lakehouse)
        spec(p.db)
    correct = 0
    started = time.perf_counter()
    for p in pairs:
        gold, pred = run(p.db, p.sql), run(p.db, p.sql)
        correct += gold is not None and pred is not None and compare_results(gold, pred, gold_sql=p.sql).equal
    seconds = time.perf_counter() - started
    return {"pairs": len(pairs), "seconds": round(seconds, 3), "pairs_per_s": round(len(pairs) / seconds, 1),
            "ex": round(correct / len(pairs), 4)}


def _read_pairs(cfg, dataset) -> list:
    from text2sql.data import load_pairs

    return load_pairs(cfg, str(dataset))


def _spider(cfg, tmp: Path) -> tuple[list, str]:
    """An imported Spider dataset under datasets/, or else the shared Spider sample imported into `tmp`."""
    from text2sql.data import import_spider, load_dataset

    for manifest in sorted(cfg.path(cfg.data.datasets_dir).glob("*/dataset.yaml")):
        ds = load_dataset(cfg, manifest.parent.name)
        if ds.databases and all(path.is_file() for path in ds.databases.values()):
            pairs = _read_pairs(cfg, ds.name)
            if pairs and all(p.db for p in pairs):
                return pairs, ds.name
    source = next((p for p in SPIDER_SAMPLES if (p / "dev.json").is_file()), None)
    if source is None:
        sys.exit("no Spider dataset under datasets/ and no shared/data/spider-sample to import")
    target = str(tmp / "spider-sample")
    report = import_spider(cfg, source, name=target)
    print(f"imported {report.kept} of {report.questions} Spider pairs from {source}", flush=True)
    return _read_pairs(cfg, target), target


if __name__ == "__main__":
    main()
