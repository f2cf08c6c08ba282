"""How much Python on another thread slows the decode engine's thread, and what the server does about it.

    python bench/gil_contention.py [--steps 96] [--repeats 3]

`text2sql serve` decodes on one thread (`text2sql.engine`) while its event loop builds prompts and judges replies
with sqlglot, pure Python. Every torch call releases the GIL; taking it back waits up to the interpreter's switch
interval while another thread runs Python. Measured here, on the CPU with a tiny Llama (many small torch calls per
step, as a CUDA-graph step's few calls plus its host work are on a GPU): ms per engine step (16 slots)

- alone;
- beside a thread checking replies with `check_sql` in-process (sqlglot alone: pure Python, like prompt building),
  at switch intervals of 5 ms (Python's default), 2, 1 and 0.5 ms;
- beside a thread judging replies with `judge_reply` in-process (the server before: sqlglot and DuckDB's binder
  on the event loop), at 5 and 1 ms;
- beside a thread that has the same replies judged and run in a sandbox worker process (`judge_and_run`, what
  `serve` does now for replies it executes), at 1 ms (`ENGINE_SWITCH_INTERVAL_S`).

Ratios are against `alone` in the same run (median of --repeats). Writes bench/results/gil_contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gil_contention.json"
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96, help="tokens each of the 16 requests decodes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from tinymodel import tiny_model_dir
    from transformers import AutoModelForCausalLM

    from text2sql.catalog import load_snapshot
    from text2sql.config import load_config
    from text2sql.serve.engine_backend import ENGINE_SWITCH_INTERVAL_S
    from text2sql.warehouse import QueryRunner, check_sql, judge_reply

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir()).eval()
    cfg = load_config(REPO / "text2sql.yaml")
    snapshot = load_snapshot(cfg)
    replies = [json.loads(line)["sql"] for line in (REPO / "datasets/demo/pairs.jsonl").read_text().splitlines()]

    def step_ms() -> float:
        from text2sql.engine import DecodeEngine, Request

        engine = DecodeEngine(model, None, 16, compile=False)  # no eos: every request decodes --steps tokens
        requests = [Request(prompt=list(range(5, 200 + i)), max_new_tokens=args.steps) for i in range(16)]
        started = time.perf_counter()
        with torch.inference_mode():
            engine.run(requests)
        return (time.perf_counter() - started) * 1000 / engine.steps

    def beside(judge, interval: float) -> tuple[float, float]:
        """ms per step while `judge` runs on another thread; replies judged per second there."""
        saved, stop, done = sys.getswitchinterval(), threading.Event(), [0]

        def busy() -> None:
            while not stop.is_set():
                judge(replies[done[0] % len(replies)])
                done[0] += 1

        sys.setswitchinterval(interval)
        thread = threading.Thread(target=busy)
        thread.start()
        try:
            started = time.perf_counter()
            ms = step_ms()
            rate = done[0] / (time.perf_counter() - started)
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(saved)
        return ms, rate

    with QueryRunner.from_config(cfg, workers=1, snapshot=snapshot) as runner:
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            runs.setdefault("alone", []).append((step_ms(), 0.0))
            for ms in (5, 2, 1, 0.5):
                runs.setdefault(f"check_sql in-process, {ms} ms", []).append(
                    beside(lambda r: check_sql(r, snapshot), ms / 1000))
            for ms in (5, 1):
                runs.setdefault(f"judge_reply in-process, {ms} ms", []).append(
                    beside(lambda r: judge_reply(r, snapshot), ms / 1000))
            runs.setdefault(f"judge_and_run in a worker, {ENGINE_SWITCH_INTERVAL_S * 1000:g} ms", []).append(
                beside(lambda r: runner.judge_and_run(r, 1), ENGINE_SWITCH_INTERVAL_S))
    alone = statistics.median(ms for ms, _ in runs["alone"])
    rows = []
    for name, values in runs.items():
        ms = statistics.median(ms for ms, _ in values)
        rows.append({"name": name, "ms_per_step": round(ms, 2), "slowdown": round(ms / alone, 2),
                     "replies_judged_per_s": round(statistics.median(rate for _, rate in values), 1)})
    for row in rows:
        judged = row["replies_judged_per_s"]
        print(f"{row['name']:38s} {row['ms_per_step']:7.2f} ms/step  {row['slowdown']:5.2f}x alone"
              + (f"  {judged:6.1f} replies judged/s beside it" if judged else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                    "cpus": os.cpu_count(), "steps": args.steps,
                                    "repeats": args.repeats, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
