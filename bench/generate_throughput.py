"""Generation throughput of `text2sql predict` (batched) against one-at-a-time generation, in one run.

    python bench/generate_throughput.py --model runs/<run>/merged      # the demo test split
    python bench/generate_throughput.py --model DIR --eval             # + generate, execute, compare end to end
    python bench/generate_throughput.py --smoke                        # CPU: the tiny test model, 6 prompts

Both ways use `text2sql.generate.generate` on the prompts `predict` builds (`prompts_for`), greedy, the same
max_new_tokens; one-at-a-time is the same call with batch size 1. Prints predictions/s, new tokens/s and the
ratio; with --eval, also the wall time of predict + evaluate on the split (that needs duckdb, i.e. this CPU
side: on the GPU machine generate there and evaluate the predictions here). Writes
bench/results/generate_throughput.json unless --smoke.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model dir or known name (default model.base)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N questions (0 = all)")
    parser.add_argument("--single", type=int, default=16, help="Questions timed one at a time (a sample: it is slow)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--eval", action="store_true", help="Also time predict + evaluate end to end")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    import torch

    from text2sql.config import load_config
    from text2sql.data import load_pairs
    from text2sql.generate import generate, load_generator, prompts_for

    cfg = load_config(REPO / "text2sql.yaml")
    if args.smoke:
        from tests.tinymodel import tiny_model_dir

        args.model, args.limit, args.single = str(tiny_model_dir(str(REPO / "schemas"))), 6, 3
        args.max_new_tokens = args.max_new_tokens or 16
    gen = load_generator(args.model or cfg.model.base, cfg)
    pairs = load_pairs(cfg, cfg.data.dataset, args.split)
    if args.limit:
        pairs = pairs[: args.limit]
    messages = prompts_for(cfg, gen, pairs, cfg.data.dataset)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    generate(gen, messages[:2], args.max_new_tokens)  # warm-up: kernels, allocator
    batched = _timed(gen, messages, args.max_new_tokens, gen.batch_size)
    single = _timed(gen, messages[: args.single], args.max_new_tokens, 1)
    result = {"device": device, "date": dt.date.today().isoformat(), "model": str(gen.model_dir), "kind": gen.kind,
              "questions": len(messages), "batched": batched, "one_at_a_time": single,
              "speedup_predictions_per_s": batched["predictions_per_s"] / single["predictions_per_s"]}
    if args.eval:
        from text2sql.evaluate import evaluate
        from text2sql.generate import predict

        started = time.perf_counter()
        predictions = predict(cfg, gen.model_dir, split=args.split)
        report = evaluate(cfg, predictions, split=args.split, release=f"bench-generate-{dt.date.today():%Y%m%d}",
                          model=str(gen.model_dir))
        result["end_to_end"] = {"seconds": time.perf_counter() - started, "ex": report["metrics"]["ex"]}
    for name in ("batched", "one_at_a_time"):
        r = result[name]
        print(f"{name:14s} batch {r['batch_size']:3d}: {r['predictions_per_s']:7.2f} predictions/s "
              f"{r['new_tokens_per_s']:9.0f} new tokens/s ({r['prompts']} prompts, {r['seconds']:.1f} s)")
    print(f"batched / one-at-a-time predictions/s: {result['speedup_predictions_per_s']:.1f}x")
    if "end_to_end" in result:
        print(f"predict + evaluate on {args.split}: {result['end_to_end']['seconds']:.1f} s")
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generate_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


def _timed(gen, messages, max_new_tokens, batch_size: int) -> dict:
    from text2sql.generate import generate

    saved, gen.batch_size = gen.batch_size, batch_size
    try:
        generate(gen, messages, max_new_tokens)
    finally:
        gen.batch_size = saved
    s = gen.stats
    return {"batch_size": batch_size, "prompts": s["prompts"], "seconds": s["seconds"],
            "predictions_per_s": s["prompts"] / s["seconds"], "new_tokens_per_s": s["new_tokens"] / s["seconds"]}


if __name__ == "__main__":
    main()
