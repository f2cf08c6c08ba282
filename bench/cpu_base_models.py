"""Few-step CPU timing of base models against SmolLM2-135M, with the CPU budget of `text2sql demo`.

    PYTHONPATH=. python bench/cpu_base_models.py [--models-dir DIR] smollm2-135m-instruct qwen2.5-coder-0.5b-instruct

For each model, in one process (the first is the baseline the others are divided by): pull (convert) it, generate
4 demo test questions (schema budget 1024 tokens, batch 4, at most 64 new tokens) and train 2 LoRA steps of 2
examples. Prints one JSON line per model, then the ratios. It estimates whether a model fits the demo's 25-minute
CPU budget without running the whole demo; numbers from a machine shared with other jobs are only ratios.
"""

import argparse
import json
import time

from text2sql.config import load_config
from text2sql.data import load_pairs
from text2sql.generate import generate, load_generator, prompts_for
from text2sql.models import pull_model
from text2sql.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--models-dir", default=".models")
    parser.add_argument("--out-dir", default="/tmp/cpu_base_models")
    args = parser.parse_args()
    out = {}
    for name in args.models:
        cfg = load_config("text2sql.yaml", [
            f"model.models_dir={args.models_dir}", f"model.base={name}", "prompt.max_schema_tokens=1024",
            "generate.batch_size=4", "generate.max_new_tokens=64", f"train.output_dir={args.out_dir}",
            f"train.run_name={name}-{int(time.time())}", "train.method=lora", "train.max_steps=2",
            "train.per_device_train_batch_size=2", "train.save_steps=1000", "train.eval_steps=1000",
            "train.logging_steps=1", "train.select_by=last"])
        started = time.perf_counter()
        base = pull_model(cfg)
        pull_s = time.perf_counter() - started
        gen = load_generator(base, cfg)
        messages = prompts_for(cfg, gen, load_pairs(cfg, "demo", "test")[:4], "demo")
        generate(gen, messages[:1], 4)  # warm-up
        generate(gen, messages)
        s = gen.stats
        del gen
        started = time.perf_counter()
        run = train(cfg)
        metrics = json.loads((run / "manifest.json").read_text())["metrics"]
        out[name] = {"pull_s": round(pull_s, 1), "generate_s_per_question": round(s["seconds"] / s["prompts"], 2),
                     "new_tokens_per_s": round(s["new_tokens"] / s["seconds"], 1),
                     "train_s_per_step": round(metrics["train_runtime"] / 2, 2),
                     "train_total_s": round(time.perf_counter() - started, 1)}
        print(json.dumps({name: out[name]}), flush=True)
    first = out[args.models[0]]
    for name in args.models[1:]:
        ratios = {k: round(out[name][k] / first[k], 2) for k in ("generate_s_per_question", "train_s_per_step")}
        print(json.dumps({f"{name} / {args.models[0]}": ratios}))


if __name__ == "__main__":
    main()
