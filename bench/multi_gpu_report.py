"""Tokens/s, scaling and peak memory per GPU of `text2sql train` runs launched on one or more processes.

    python bench/multi_gpu_report.py RUN_DIR [RUN_DIR ...] [--warmup 10] [--out bench/results/multi_gpu_ddp]

Reads each run dir's manifest.json and the rank<k>.json files every rank writes when T2S_RANK_REPORT is set
(see text2sql/train.py): tokens/s is taken from rank 0's (step, seconds, tokens) marks after `--warmup`
steps (tokens counted over all ranks by TRL's `num_tokens`, padding excluded). Without rank reports it falls
back to the whole run: the last logged num_tokens / train_runtime from log.jsonl (warm-up included).
Scaling is each run's tokens/s over the first run's; efficiency divides it by the ratio of world sizes.
Prints a Markdown table; with --out also writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs; the first is the baseline for scaling")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = parser.parse_args()

    rows = [measure(run, args.warmup) for run in args.runs]
    base = rows[0]
    for row in rows:
        if base["tokens_per_s"] and row["tokens_per_s"]:
            row["scaling"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
            row["efficiency"] = round(row["scaling"] * base["world_size"] / row["world_size"], 3)
    table = render(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"warmup_steps": args.warmup, "runs": rows}, indent=2) + "\n")


def measure(run: Path, warmup: int) -> dict:
    """One run's figures: world size, tokens/s, steps/s, peak GPU memory per rank, whether the ranks agree."""
    manifest = json.loads((run / "manifest.json").read_text())
    world = manifest.get("world_size", 1)
    reports = [json.loads((run / f"rank{k}.json").read_text()) for k in range(world) if (run / f"rank{k}.json").is_file()]
    row = {
        "run": run.name, "world_size": world, "method": manifest.get("method"), "device": manifest.get("device"),
        "status": manifest.get("status"), "global_step": manifest.get("global_step"),
        "settings": manifest.get("resolved_train"),
        "peak_mem_gb": [r.get("peak_mem_gb") for r in reports],
        "peak_reserved_gb": [r.get("peak_reserved_gb") for r in reports],
        # Equal under DDP (replicas); under FSDP each rank holds a different shard.
        "ranks_agree": len({r["trainable_sha256"] for r in reports}) == 1 if len(reports) == world > 1 else None,
    }
    if reports:
        marks = reports[0]["marks"]
        timed = [m for m in marks if m[0] >= warmup]
        if len(timed) < 2:  # a short run: time its last two logs
            timed = marks[-2:]
        if len(timed) >= 2 and timed[-1][1] > timed[0][1]:
            (s0, t0, n0), (s1, t1, n1) = timed[0], timed[-1]
            row.update(timing="after warm-up", steps_timed=s1 - s0, seconds=round(t1 - t0, 3),
                       tokens_per_s=round((n1 - n0) / (t1 - t0), 1), steps_per_s=round((s1 - s0) / (t1 - t0), 3))
            return row
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").is_file() else []
    tokens = max((r.get("num_tokens", 0) for r in log if "loss" in r), default=0)
    runtime = next((r["train_runtime"] for r in reversed(log) if "train_runtime" in r), None)
    row.update(timing="whole run", steps_timed=manifest.get("global_step"), seconds=runtime,
               tokens_per_s=round(tokens / runtime, 1) if runtime and tokens else None,
               steps_per_s=round(manifest.get("global_step", 0) / runtime, 3) if runtime else None)
    return row


def render(rows: list[dict]) -> str:
    lines = ["| run | GPUs | method | tokens/s | steps/s | scaling | efficiency | peak GB per rank | ranks agree | timing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = ", ".join(f"{p:.1f}" for p in r["peak_mem_gb"] if p is not None) or "-"
        lines.append(f"| {r['run']} | {r['world_size']} | {r['method']} | {r.get('tokens_per_s') or '-'} | "
                     f"{r.get('steps_per_s') or '-'} | {r.get('scaling', '-')} | {r.get('efficiency', '-')} | {peak} | "
                     f"{'-' if r['ranks_agree'] is None else r['ranks_agree']} | {r['timing']} ({r.get('steps_timed')} steps) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
