"""Generation throughput of `text2sql predict` (batched) against one-at-a-time generation, in one run.

    python bench/generate_throughput.py --model runs/<run>/merged      # the demo test split
    python bench/generate_throughput.py --model DIR --eval             # + generate, execute, compare end to end
    python bench/generate_throughput.py --random-8b --max-new-tokens 128   # a Llama-3.1-8B-shaped model, random weights
    python bench/generate_throughput.py --smoke                        # CPU: the tiny test model, 6 prompts
    python bench/generate_throughput.py --model DIR --decoding eager,static --out DIR   # both decoding paths
    python bench/generate_throughput.py --model qwen2.5-coder-0.5b-instruct --dtype float32,bfloat16 --limit 8

Both ways use `text2sql.generate.generate` on the prompts `predict` builds (`prompts_for`), greedy, the same
max_new_tokens; one-at-a-time is the same call with batch size 1. Prints predictions/s, new tokens/s and the
ratio (for each --batch-size given; default generate.batch_size); with --eval, also the wall time of predict + evaluate on the split (that needs duckdb, i.e. this CPU
side: on the GPU machine generate there and evaluate the predictions here). Writes
bench/results/generate_throughput.json (--random-8b: generate_throughput_8b_random.json) unless --smoke.

--random-8b: Llama-3.1-8B's shape with random weights, built on the GPU (throughput does not depend on the
values), with the default base model's tokenizer (so its vocabulary, 49,152, instead of Llama's 128,256).
Random weights rarely emit the end-of-turn token, so nearly every reply runs to --max-new-tokens.

--decoding eager,static: the whole measurement once per decoding path (`generate.decoding`; static warms its
compiled steps first, untimed), in the same run; `by_decoding` holds each, `static_vs_eager` the ratios and how
many replies are the same, and each path reports its batch-1 decode time per token (a long reply minus a
1-token one, over the extra tokens: prefill excluded). `static-repeat` is the static engine with transformers' own
sdpa (key/value heads repeated for a one-token query when compiled), `static-packed` the same with the engine's
packed attention (`text2sql.engine.PACKED_GQA`, on when compiled), `static` as `generate` runs it:
`--decoding static-repeat,static-packed`. A `-dynamic` suffix (`static-packed-dynamic`) compiles the step with
symbolic sizes (`text2sql.engine.DYNAMIC_SHAPES`, opt-in): one compile for every batch bucket above 1. `--dtype
float32,bfloat16` times each path in each weight dtype (named `<path>@<dtype>`; the model is cast from one to the
next). Each path's warm-up (compiling) time is in its `warmup_s`. After each path, what is measured so far is written
to generate_throughput.partial.json in --out.
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
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model dir or known name (default model.base)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N questions (0 = all)")
    parser.add_argument("--single", type=int, default=16, help="Questions timed one at a time (a sample: it is slow)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, action="append", default=[],
                        help="batch size(s) of the batched run (repeatable; default generate.batch_size)")
    parser.add_argument("--random-8b", action="store_true", help="a Llama-3.1-8B-shaped model with random weights")
    parser.add_argument("--prefix-cache-ablation", action="store_true",
                        help="also time the best batch size and one-at-a-time with generate.prefix_cache off, "
                             "then with it on again")
    parser.add_argument("--eval", action="store_true", help="Also time predict + evaluate end to end")
    parser.add_argument("--decoding", default=None,
                        help="comma-separated decoding paths to time in turn, e.g. eager,static (default: the "
                             "config's generate.decoding, resolved)")
    parser.add_argument("--dtype", default=None,
                        help="comma-separated weight dtypes to time in turn, e.g. float32,bfloat16 (the model is cast "
                             "between them; default generate.dtype)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override a config value (repeatable), as the CLI's --set")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the result JSON (default bench/results; --smoke writes only with --out)")
    args = parser.parse_args()

    import torch

    from text2sql.config import load_config
    from text2sql.data import load_pairs
    from text2sql import engine as engine_module
    from text2sql.generate import generate, load_generator, prompts_for

    cfg = load_config(REPO / "text2sql.yaml", args.overrides)
    if args.smoke:
        from tests.tinymodel import tiny_model_dir

        args.model, args.limit, args.single = str(tiny_model_dir(str(REPO / "schemas"))), 6, 3
        args.max_new_tokens = args.max_new_tokens or 16
    if args.random_8b:
        from train_throughput import LLAMA_8B, TINY

        from text2sql.models import resolve_base_model

        tokenizer_dir = args.model if args.smoke else resolve_base_model(cfg)
        gen = random_generator(cfg, TINY if args.smoke else LLAMA_8B, tokenizer_dir)
    else:
        gen = load_generator(args.model or cfg.model.base, cfg)
    pairs = load_pairs(cfg, cfg.data.dataset, args.split)
    if args.limit:
        pairs = pairs[: args.limit]
    messages = prompts_for(cfg, gen, pairs, cfg.data.dataset)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    decodings = args.decoding.split(",") if args.decoding else [gen.decoding]
    by_decoding = {}
    defaults = engine_module.PACKED_GQA, engine_module.DYNAMIC_SHAPES
    dtypes = args.dtype.split(",") if args.dtype else [None]
    runs = [(decoding, dtype) for dtype in dtypes for decoding in decodings]
    decodings = [f"{decoding}@{dtype}" if len(dtypes) > 1 else decoding for decoding, dtype in runs]
    for name, (decoding, dtype) in zip(decodings, runs):
        if dtype:  # float32 first, then cast down: a cast up would not bring the precision back
            gen.model.to(getattr(torch, dtype))
            gen._prefixes.clear()  # kept prefix KV of the other dtype
        # static-repeat / static-packed: the static engine with transformers' own attention (key/value heads repeated
        # when compiled) / with the engine's packed one; -dynamic: its step compiled with symbolic sizes (once for
        # every bucket above 1); static: as generate runs it
        engine_module.PACKED_GQA = True if "packed" in decoding else False if "repeat" in decoding else defaults[0]
        engine_module.DYNAMIC_SHAPES = decoding.endswith("-dynamic") or defaults[1]
        gen._engines.clear()
        gen.decoding = "static" if decoding.startswith("static") else decoding
        print(f"decoding: {name}", file=sys.stderr)
        by_decoding[name] = {"dtype": str(gen.model.dtype).removeprefix("torch."), **_measure(gen, messages, args)}
        if args.out:  # what is measured so far, should a later path not finish (a timeout, a hang)
            _write(args.out, "generate_throughput.partial", {"device": device, "model": str(args.model),
                                                               "by_decoding": _without_replies(by_decoding)})
    model_name = "llama-3.1-8b-shape-random" if args.random_8b else str(gen.model_dir)
    result = {"device": device, "date": dt.date.today().isoformat(), "model": model_name, "kind": gen.kind,
              "params": sum(p.numel() for p in gen.model.parameters()), "questions": len(messages),
              "max_new_tokens": args.max_new_tokens or gen.max_new_tokens, "decoding": decodings[-1],
              **by_decoding[decodings[-1]]}
    batched, single, batched_runs = result["batched"], result["one_at_a_time"], result["batched_runs"]
    if len(decodings) > 1:
        result["by_decoding"] = by_decoding
        base, fast = by_decoding[decodings[0]], by_decoding[decodings[-1]]
        result[f"{decodings[-1]}_vs_{decodings[0]}"] = {
            "batched_predictions_per_s": fast["batched"]["predictions_per_s"] / base["batched"]["predictions_per_s"],
            "one_at_a_time_predictions_per_s":
                fast["one_at_a_time"]["predictions_per_s"] / base["one_at_a_time"]["predictions_per_s"],
            "decode_ms_per_token_batch1": fast["decode_ms_per_token_batch1"] / base["decode_ms_per_token_batch1"],
            "same_replies": sum(a == b for a, b in zip(fast["batched"]["replies"], base["batched"]["replies"])),
            "prompts": len(messages)}
        for name, r in by_decoding.items():
            print(f"{name:7s}: batched {r['batched']['predictions_per_s']:7.2f} predictions/s, one at a time "
                  f"{r['one_at_a_time']['predictions_per_s']:6.2f}/s, batch-1 decode "
                  f"{r['decode_ms_per_token_batch1']:.2f} ms/token, warm-up {r['warmup_s']:.1f} s")
        ratio = result[f"{decodings[-1]}_vs_{decodings[0]}"]
        print(f"{decodings[-1]} / {decodings[0]}: batched {ratio['batched_predictions_per_s']:.2f}x, one at a time "
              f"{ratio['one_at_a_time_predictions_per_s']:.2f}x, same replies {ratio['same_replies']}/{len(messages)}")
    if args.prefix_cache_ablation:
        runs = {"batched": (messages, batched["batch_size"]), "one_at_a_time": (messages[: args.single], 1)}
        gen.prefix_cache = False
        off = {name: _timed(gen, m, args.max_new_tokens, b) for name, (m, b) in runs.items()}
        gen.prefix_cache = True
        # The cached runs again, after the uncached ones: warm-up or drift then favours neither side.
        again = {name: _timed(gen, m, args.max_new_tokens, b) for name, (m, b) in runs.items()}
        result["without_prefix_cache"], result["with_prefix_cache_again"] = off, again
        for name, r in off.items():
            # The cache must not change what is generated: count the replies that match the cached run's.
            r["same_replies"] = sum(a == b for a, b in zip(r["replies"], result[name]["replies"]))
            print(f"{name:14s} batch {r['batch_size']:3d} without the prefix cache: {r['predictions_per_s']:7.2f} "
                  f"predictions/s; with it {result[name]['predictions_per_s'] / r['predictions_per_s']:.2f}x before, "
                  f"{again[name]['predictions_per_s'] / r['predictions_per_s']:.2f}x after; "
                  f"same reply {r['same_replies']}/{r['prompts']}")
    if args.eval:
        from text2sql.evaluate import evaluate
        from text2sql.generate import predict

        started = time.perf_counter()
        predictions = predict(cfg, gen.model_dir, split=args.split)
        report = evaluate(cfg, predictions, split=args.split, release=f"bench-generate-{dt.date.today():%Y%m%d}",
                          model=str(gen.model_dir), force=True)
        result["end_to_end"] = {"seconds": time.perf_counter() - started, "ex": report["metrics"]["ex"]}
    for name, r in [*(("batched", r) for r in batched_runs), ("one_at_a_time", single)]:
        print(f"{name:14s} batch {r['batch_size']:3d}: {r['predictions_per_s']:7.2f} predictions/s "
              f"{r['new_tokens_per_s']:9.0f} new tokens/s ({r['prompts']} prompts, {r['seconds']:.1f} s)")
    print(f"batched / one-at-a-time predictions/s: {result['speedup_predictions_per_s']:.1f}x")
    if "end_to_end" in result:
        print(f"predict + evaluate on {args.split}: {result['end_to_end']['seconds']:.1f} s")
    for r in [*batched_runs, single, *result.get("without_prefix_cache", {}).values(),
              *result.get("with_prefix_cache_again", {}).values()]:
        r.pop("replies", None)
    if "by_decoding" in result:
        result["by_decoding"] = _without_replies(result["by_decoding"])
    if not args.smoke or args.out:
        name = "generate_throughput_8b_random" if args.random_8b else "generate_throughput"
        print(f"wrote {_write(args.out or REPO / 'bench' / 'results', name, result)}")


def _without_replies(by_decoding: dict) -> dict:
    """A copy of each path's measures without the replies (kept in memory to count the same ones)."""
    strip = lambda run: {k: v for k, v in run.items() if k != "replies"}  # noqa: E731
    return {name: {**m, "batched": strip(m["batched"]), "batched_runs": [strip(r) for r in m["batched_runs"]],
                   "one_at_a_time": strip(m["one_at_a_time"])} for name, m in by_decoding.items()}


def _write(out: Path, name: str, result: dict) -> Path:
    """Write `result` as out/name.json atomically: a run stopped by its time limit leaves the last whole file."""
    from text2sql.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return out / f"{name}.json"


def _measure(gen, messages, args) -> dict:
    """Batched runs, one at a time, and the batch-1 decode time per token, with `gen.decoding` as set."""
    from text2sql.generate import generate

    started = time.perf_counter()
    _warm(gen, messages, args.max_new_tokens, [*(args.batch_size or [gen.batch_size]), 1])
    warmup_s = time.perf_counter() - started
    generate(gen, messages[:2], args.max_new_tokens)  # warm-up: kernels, allocator
    batched_runs = [_timed(gen, messages, args.max_new_tokens, b) for b in (args.batch_size or [gen.batch_size])]
    single = _timed(gen, messages[: args.single], args.max_new_tokens, 1)
    batched = max(batched_runs, key=lambda r: r["predictions_per_s"])
    return {"warmup_s": warmup_s, "batched": batched, "batched_runs": batched_runs, "one_at_a_time": single,
            "speedup_predictions_per_s": batched["predictions_per_s"] / single["predictions_per_s"],
            "decode_ms_per_token_batch1": _decode_ms_per_token(gen, messages, args.max_new_tokens)}


def _warm(gen, messages, max_new_tokens, batch_sizes) -> None:
    """Static decoding: compile and record each engine's steps (one engine per batch size) for the longest prompt,
    so no timed run pays for it."""
    if gen.decoding != "static":
        return
    from text2sql.generate import decode_engine, encode_chats

    ids, shared = encode_chats(gen, messages)
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    for batch_size in batch_sizes:
        decode_engine(gen, batch_size).warm(ids[longest], shared[longest], max_new_tokens or gen.max_new_tokens)


def _decode_ms_per_token(gen, messages, max_new_tokens) -> float:
    """Batch 1: (time of the longest reply among a few prompts - time of 1 token) / the extra tokens."""
    long_runs = [_timed(gen, [m], max_new_tokens, 1) for m in messages[:3]]
    run = max(long_runs, key=lambda r: r["new_tokens"])
    one = _timed(gen, [messages[long_runs.index(run)]], 1, 1)
    return (run["seconds"] - one["seconds"]) * 1000 / max(1, run["new_tokens"] - one["new_tokens"])


def random_generator(cfg, shape: dict, tokenizer_dir):
    """A Llama of this shape with random weights, in memory, on the GPU when there is one. Its vocabulary is the
    tokenizer's, so every id it writes decodes."""
    import torch
    from train_throughput import random_llama
    from transformers import AutoTokenizer

    from text2sql.generate import Generator
    from text2sql.models import set_end_of_turn

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    set_end_of_turn(tokenizer)
    model = random_llama(shape, tokenizer, len(tokenizer), torch.cuda.is_available())
    return Generator(model.eval(), tokenizer, None, "random", cfg.prompt, None, cfg.generate.batch_size,
                     cfg.generate.max_new_tokens)


def _timed(gen, messages, max_new_tokens, batch_size: int) -> dict:
    from text2sql.generate import generate

    saved, gen.batch_size = gen.batch_size, batch_size
    try:
        replies = generate(gen, messages, max_new_tokens)
    finally:
        gen.batch_size = saved
    s = gen.stats
    return {"batch_size": batch_size, "prompts": s["prompts"], "seconds": s["seconds"],
            "predictions_per_s": s["prompts"] / s["seconds"], "new_tokens_per_s": s["new_tokens"] / s["seconds"],
            "new_tokens": s["new_tokens"], "replies": replies}


if __name__ == "__main__":
    main()
