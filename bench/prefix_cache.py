"""Questions one at a time through the decode engine (the server's case): what the prefix cache saves, in one run.

    python bench/prefix_cache.py [--model smollm2-135m-instruct] [--questions 8] [--out bench/results/prefix_cache.json]
    python bench/prefix_cache.py --smoke      # the tiny test model, 3 questions, float32: replies must all agree

Each question's system message is the instructions, the schema, then the business definitions chosen for it
(`text2sql.prompt.build_messages`). A fresh engine per way, the same prompts (the demo test split's first
--questions, as `predict` builds them for the model), greedy, --max-new-tokens:

- `head`: each request keeps and finds the prefix every question shares (`shared_system_head`: up to the
  definitions), what `encode_chats` gives now;
- `whole_system`: each request keeps its whole system message, definitions included (what it gave before v0.16's
  fix): no later question starts with it, so every prompt is prefilled whole;
- `off`: no prefix cache.

Reports each way's prefill seconds and tokens per request (the engine's account; the first request of `head` fills
the cache), whether its replies equal `off`'s, and the ratios against `off` and `whole_system`. Writes --out
(--smoke: only when given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Model dir or known name")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/prefix_cache.json")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        from tests.tinymodel import tiny_model_dir

        args.model, args.questions = str(tiny_model_dir(str(REPO / "schemas"))), 3
    elif args.out is None:
        args.out = REPO / "bench" / "results" / "prefix_cache.json"

    from text2sql.config import load_config
    from text2sql.data import load_pairs
    from text2sql.engine import Request, common_prefix_len
    from text2sql.generate import decode_engine, encode_chats, load_generator, prompts_for
    from text2sql.models import resolve_model_dir
    from text2sql.prompt import render_prompt

    cfg = load_config(REPO / "text2sql.yaml", ["generate.decoding=static"])
    model_dir = resolve_model_dir(cfg, args.model)
    gen = load_generator(model_dir, cfg)
    pairs = load_pairs(cfg, split="test")[:args.questions]
    chats = prompts_for(cfg, gen, pairs, cfg.data.dataset)
    ids, head = encode_chats(gen, chats)
    tok = gen.tokenizer
    whole = [common_prefix_len([row, tok(render_prompt(tok, [chat[0], {"role": "user", "content": ""}]),
                                          add_special_tokens=False)["input_ids"]]) for chat, row in zip(chats, ids)]

    def one_at_a_time(shared: list[int]) -> dict:
        gen._engines.clear()
        gen._prefixes.clear()
        engine = decode_engine(gen, 4)
        requests = [Request(row, args.max_new_tokens, shared=n) for row, n in zip(ids, shared)]
        for request in requests:
            engine.run([request])
        spent = engine.account()
        n = len(requests)
        return {"prefill_s_per_request": round(spent["prefill_s"] / n, 4),
                "prefill_forward_s_per_request": round(spent["prefill_forward_s"] / n, 4),
                "prefill_tokens_per_request": round(spent["prefill_tokens"] / n, 1),
                "cached_tokens_per_request": round(spent["prefill_cached_tokens"] / n, 1),
                "replies": [r.outputs[0] for r in requests]}

    ways = {"off": one_at_a_time([0] * len(ids)), "whole_system": one_at_a_time(whole), "head": one_at_a_time(head)}
    plain = ways["off"]["replies"]
    for way in ways.values():
        way["same_replies_as_off"] = sum(a == b for a, b in zip(way.pop("replies"), plain))
    result = {
        "date": dt.date.today().isoformat(), "model": str(model_dir), "device": str(gen.model.device),
        "dtype": str(next(gen.model.parameters()).dtype), "machine": platform.processor() or platform.machine(),
        "questions": len(ids), "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1),
        "head_tokens": head[0], "whole_system_tokens_mean": round(sum(whole) / len(whole), 1),
        "ways": ways,
        "head_vs_off": round(ways["off"]["prefill_s_per_request"] / ways["head"]["prefill_s_per_request"], 2),
        "head_vs_whole_system": round(ways["whole_system"]["prefill_s_per_request"]
                                      / ways["head"]["prefill_s_per_request"], 2),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    seconds = {name: way["prefill_s_per_request"] for name, way in ways.items()}
    print(f"prefill per request: head {seconds['head']:.3f} s, whole system {seconds['whole_system']:.3f} s, off "
          f"{seconds['off']:.3f} s; same replies as off {ways['head']['same_replies_as_off']}/{len(ids)}; "
          f"{result['head_vs_off']}x against off, {result['head_vs_whole_system']}x against the whole system message")


if __name__ == "__main__":
    main()
