"""Training throughput: a plain HF Trainer + PEFT QLoRA baseline against `text2sql train`, in one run.

    python bench/train_throughput.py                 # on a CUDA GPU: 8B-class + SmolLM2-135M, both ways
    python bench/train_throughput.py --only 135m     # just the demo-data runs
    python bench/train_throughput.py --only qwen15 --set model.models_dir=/root/w/models --results-name train_throughput_qwen15
    python bench/train_throughput.py --smoke         # CPU: a tiny Llama, LoRA, a few steps (CI)

For each model it measures (a) `baseline`: HF `Trainer` + PEFT QLoRA as the PEFT docs set it up
(prepare_model_for_kbit_training, padded batches, no packing) and (b) `text2sql`: `text2sql.train.train`
with the project's defaults. Figures: real (non-padding) tokens/s over the steps after warm-up,
MFU = FLOPs per real token x tokens/s / peak, with FLOPs per token = 4*N_frozen + 6*N_lora + attention
(6 * layers * hidden * example length, causal), against the spec peak (989 TFLOP/s bf16 on H200) and a
bf16 matmul ceiling measured here; peak GPU memory. Writes bench/results/<--results-name>.{json,md}.
`--only` picks models (a comma list of 8b, 135m, qwen15); `--set SECTION.KEY=V` (repeatable) overrides every
text2sql config the bench loads (where `model pull` puts models, train.* settings of every text2sql run).

The 8B-class model is a Llama-3.1-8B config with random weights (speed and memory do not depend on the
values), built on the GPU and saved once; the sequences are random-token "questions" whose prompt +
completion lengths spread evenly up to --seq-len.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
MODELS = ("8b", "135m", "qwen15")
"""What --only picks from: the 8B-shaped random Llama, the project's base model (SmolLM2-135M), Qwen2.5-Coder-1.5B."""
QWEN15 = "qwen2.5-coder-1.5b-instruct"
PROJECT_OVERRIDES: list[str] = []
"""--set overrides: every text2sql config the bench loads gets them (before the bench's own run settings)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few steps, no result files")
    parser.add_argument("--only", default=",".join(MODELS), metavar="MODEL[,MODEL]",
                        help=f"which models to run, a comma list of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="SECTION.KEY=V",
                        help="override applied to every text2sql config the bench loads (repeatable)")
    parser.add_argument("--baseline-batch", type=int, default=None,
                        help="examples per step of the baseline (default: 16 for 135m, 1 for qwen15, 1 for 8b)")
    parser.add_argument("--results-name", default="train_throughput",
                        help="write <out>/<name>.{json,md} (so a run of one model keeps the others' files)")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=6, help="steps left out of the timing")
    parser.add_argument("--seq-len", type=int, default=2048, help="longest example (tokens) of the synthetic data")
    parser.add_argument("--examples", type=int, default=256, help="synthetic examples for the 8B-class runs")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:SECTION.KEY=V[,SECTION.KEY=V]",
                        help="also run `text2sql train` with these overrides, named text2sql-NAME (repeatable)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many optimizer steps of each text2sql run after warm-up (torch.profiler): "
                             "GPU time by kernel family and where the host's time went, written to train_profile.{json,md}")
    parser.add_argument("--no-baseline", action="store_true", help="skip (a): only text2sql runs and variants")
    parser.add_argument("--no-defaults", action="store_true", help="skip (b) with the defaults: only the --variant runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    only = [m for m in args.only.split(",") if m]
    if unknown := sorted(set(only) - set(MODELS)):
        sys.exit(f"--only: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    PROJECT_OVERRIDES.extend(args.sets)
    variants = ([] if args.no_defaults else [("text2sql", [])]) + [parse_variant(v) for v in args.variant]

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("no CUDA GPU: run with --smoke on a CPU")
    workdir = Path(tempfile.mkdtemp(prefix="t2s-bench-"))
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    ceiling = measure_matmul_tflops() if cuda else None
    peak = next((v for k, v in SPEC_PEAK_TFLOPS.items() if k in device), None)
    print(f"device {device}; spec peak {peak} TFLOP/s; measured bf16 matmul {ceiling and round(ceiling)} TFLOP/s", flush=True)

    runs = []
    plans = []
    if args.smoke:
        model_dir = build_random_model(workdir / "tiny", TINY, cuda=False)
        plans.append(("tiny", model_dir, synthetic_pairs(model_dir, 24, args.seq_len, seed=0), 2, args.seq_len))
    else:
        # The demo examples carry the whole schema (~2,100 tokens): the project's train.max_length holds them.
        if "135m" in only:
            plans.append(("smollm2-135m", pull_project_model("smollm2-135m-instruct"), demo_pairs(), args.baseline_batch or 16, project_max_length()))
        if "qwen15" in only:  # the GPU base model; its padded baseline runs one example per step (what fits anywhere)
            plans.append(("qwen2.5-coder-1.5b", pull_project_model(QWEN15), demo_pairs(), args.baseline_batch or 1, project_max_length()))
        if "8b" in only:
            model_dir = build_random_model(workdir / "llama-8b-random", LLAMA_8B, cuda=True)
            plans.append(("llama-3.1-8b-random", model_dir, synthetic_pairs(model_dir, args.examples, args.seq_len, seed=0),
                          args.baseline_batch or 1, args.seq_len))
    profiles = []
    for name, model_dir, pairs, batch, seq_len in plans:
        mean_len = mean_length(model_dir, pairs, seq_len)
        # Liger patches transformers' Llama modules for the whole process, not just the model it is given: runs
        # without it (the baseline, train.liger=false variants) go before any run that may turn it on.
        no_liger = [v for v in variants if "train.liger=false" in v[1]]
        kinds = ([] if args.no_baseline else [("baseline", None)]) + no_liger + [v for v in variants if v not in no_liger]
        for kind, overrides in kinds:
            out = workdir / f"{name}-{kind}"
            try:
                if overrides is None:
                    result = run_baseline(model_dir, pairs, batch, seq_len, args, out, cuda)
                else:
                    result = run_text2sql(model_dir, pairs, batch, seq_len, args, out, cuda, overrides)
            except Exception as e:  # one failed configuration (e.g. a kernel library) must not lose the others
                print(f"{name}/{kind} failed: {type(e).__name__}: {e}", flush=True)
                result = {"error": f"{type(e).__name__}: {str(e)[:300]}", "tokens_per_s": None, "peak_mem_gb": None,
                          "steps_per_s": None}
            result.update(name=f"{name}/{kind}", model=name, mean_len=round(mean_len, 1), overrides=overrides)
            result.update(mfu(result, model_dir, peak, ceiling))
            if "profile" in result:
                profiles.append({"name": result["name"], **result.pop("profile")})
            runs.append(result)
            print(json.dumps(result), flush=True)
            if not args.smoke:  # after every run, so a run cut short by a time limit still leaves its figures
                write_results(args.out, args.results_name, device, peak, ceiling, runs, profiles)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()

    print(render_table(runs))
    for p in profiles:
        print(render_profile(p))


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    if not name or not overrides:
        sys.exit(f"--variant {text!r}: expected NAME:SECTION.KEY=VALUE[,SECTION.KEY=VALUE]")
    return f"text2sql-{name}", overrides.split(",")


def write_results(out: Path, name: str, device: str, peak, ceiling, runs: list[dict], profiles: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device, "date": dt.date.today().isoformat(), "spec_peak_tflops": peak,
              "measured_matmul_tflops": ceiling, "overrides": PROJECT_OVERRIDES, "runs": runs}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_table(runs) + "\n")
    if profiles:
        (out / "train_profile.json").write_text(json.dumps({"device": device, "date": report["date"],
                                                            "profiles": profiles}, indent=2) + "\n")
        (out / "train_profile.md").write_text("\n\n".join(render_profile(p) for p in profiles) + "\n")


# ---------------------------------------------------------------- models and data


def measure_matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def build_random_model(out: Path, shape: dict, cuda: bool) -> Path:
    """A Llama with random weights and the ChatML tokenizer of the test suite (saved, so both runs load it alike)."""
    from transformers import AutoTokenizer

    from tests.tinymodel import tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    model = random_llama(shape, tokenizer, max(shape.get("vocab_size", 0), len(tokenizer)), cuda)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


def random_llama(shape: dict, tokenizer, vocab_size: int, cuda: bool):
    """A Llama of this shape with random weights, built in place on the GPU (bf16) or the CPU (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(**{**shape, "vocab_size": vocab_size}, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, tie_word_embeddings=False)
    with torch.device("cuda" if cuda else "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)


def project_config(*overrides: str):
    """The project's text2sql.yaml with the --set overrides, then these."""
    from text2sql.config import load_config

    return load_config(REPO / "text2sql.yaml", [*PROJECT_OVERRIDES, *overrides])


def pull_project_model(name: str | None = None) -> Path:
    """The project's base model (or `name`), made by `text2sql model pull` under the config's model.models_dir."""
    from text2sql.models import pull_model

    return pull_model(project_config(*([f"model.base={name}"] if name else [])))


def demo_pairs() -> list:
    from text2sql.data import load_pairs

    return load_pairs(project_config(), "demo", "train")


TEMPLATE_SLACK = 4
"""Tokens kept free under max_tokens in `synthetic_pairs` for the end of the chat template's assistant turn."""


def synthetic_pairs(model_dir: Path, count: int, max_tokens: int, seed: int) -> list:
    """Pairs whose rendered prompt + completion lengths (schema included) spread evenly up to max_tokens."""
    from transformers import AutoTokenizer

    from text2sql.data import Pair

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    words = "revenue orders customers store region month fiscal quarter returns product category net gross".split()

    def make(i: int, n_words: int) -> Pair:
        question = " ".join(rng.choice(words) for _ in range(max(1, n_words)))
        sql = "SELECT " + ", ".join(f"sum(col_{rng.randint(0, 99)})" for _ in range(8)) + " FROM sales.orders"
        return Pair(id=f"s-{i:05d}", question=question, sql=sql, split="train")

    # Measure the fixed cost (schema, template, completion) and the tokens per word once, then aim.
    short, long = make(0, 10), make(0, 210)
    base_len, long_len = (len(f["input_ids"]) for f in tokenize_pairs(tokenizer, [short, long], 10**9))
    per_word = (long_len - base_len) / 200
    room = max_tokens - base_len
    if room < 8:
        raise SystemExit(f"--seq-len {max_tokens} leaves no room for a question after the {base_len}-token prompt")
    pairs = []
    for i in range(count):
        target = base_len + rng.randint(room // 8, room)
        n_words = int((target - base_len) / per_word)
        pair = make(i, n_words)
        # TRL's chat template closes the assistant turn with a few tokens this count does not see: keep room.
        limit = max_tokens - TEMPLATE_SLACK
        while len(tokenize_pairs(tokenizer, [pair], 10**9)[0]["input_ids"]) > limit and n_words > 1:
            n_words = int(n_words * 0.95)  # word pieces vary: trim until it fits
            pair = make(i, n_words)
        pairs.append(pair)
    return pairs


# ---------------------------------------------------------------- (a) the plain baseline


def run_baseline(model_dir: Path, pairs: list, batch: int, seq_len: int, args, out: Path, cuda: bool) -> dict:
    """HF Trainer + PEFT (Q)LoRA the way the PEFT docs show it: padded batches, no packing."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = tokenize_pairs(tokenizer, pairs, seq_len)
    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if cuda:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
        from text2sql.train_speed import set_expandable_segments

        set_expandable_segments(False)  # the allocator's default: a text2sql run before may have turned them on
    _reset_memory(cuda)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if cuda:
        model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    meter = ThroughputMeter(args.warmup, cuda, count_tokens=True)
    collator = meter.wrap_collator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=batch,
                               learning_rate=project_learning_rate(), logging_steps=1, save_strategy="no", report_to=[], bf16=cuda,
                               use_cpu=not cuda, remove_unused_columns=False, dataloader_num_workers=0),
        train_dataset=_ListDataset(features), data_collator=collator, callbacks=[meter.callback()],
    )
    trainer.train()
    result = meter.result()
    result["lora_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["losses"] = meter.losses
    del trainer, model
    return result


def project_learning_rate() -> float:
    """The baseline trains with the project's learning rate, so the two loss curves compare."""
    return project_config().train.learning_rate


def project_max_length() -> int:
    return project_config().train.max_length


def tokenize_pairs(tokenizer, pairs: list, limit: int) -> list[dict]:
    """Prompt (from the project's prompt builder) + completion + eos, labels masked on the prompt."""
    from text2sql.catalog import read_snapshot
    from text2sql.config import PromptConfig
    from text2sql.prompt import build_messages

    snapshot = read_snapshot(REPO / "schemas")
    features = []
    for p in pairs:
        prompt = tokenizer.apply_chat_template(build_messages(p.question, snapshot, PromptConfig(), tokenizer),
                                               tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(p.sql + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + completion_ids)[:limit]
        labels = ([-100] * len(prompt_ids) + completion_ids)[: len(ids)]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def mean_length(model_dir: Path, pairs: list, limit: int) -> float:
    from transformers import AutoTokenizer

    features = tokenize_pairs(AutoTokenizer.from_pretrained(model_dir), pairs, limit)
    return sum(len(f["input_ids"]) for f in features) / len(features)


class _ListDataset:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


# ---------------------------------------------------------------- (b) text2sql train


def run_text2sql(model_dir: Path, pairs: list, batch: int, seq_len: int, args, out: Path, cuda: bool,
                 extra: list[str] = ()) -> dict:
    """`text2sql.train.train` on a temp project holding these pairs, with the project's defaults (+ `extra`)."""
    import shutil

    from text2sql.config import load_config
    from text2sql.train import train

    project = out / "project"
    (project / "datasets" / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "schemas", project / "schemas", dirs_exist_ok=True)
    with (project / "datasets" / "bench" / "pairs.jsonl").open("w") as f:
        for p in pairs:
            f.write(json.dumps({"id": p.id, "question": p.question, "sql": p.sql, "db": None, "tags": [],
                                "difficulty": "easy", "author": "bench", "created": "2026-11-28", "notes": "",
                                "split": "train", "forced": False}) + "\n")
    (project / "text2sql.yaml").write_text("data:\n  dataset: bench\n")
    overrides = [f"model.base={model_dir}", f"train.max_steps={args.steps}", "train.logging_steps=1",
                 f"train.save_steps={args.steps * 10}", "train.run_name=bench", f"train.max_length={seq_len}"]
    if args.smoke:
        overrides += [f"train.per_device_train_batch_size={batch}"]
    cfg = load_config(project / "text2sql.yaml", [*PROJECT_OVERRIDES, *overrides, *extra])
    # The profiled steps (right after warm-up) are slowed by the profiler: the timing starts after them.
    meter = ThroughputMeter(args.warmup + args.profile, cuda, count_tokens=False)
    callbacks = [meter.callback()]
    profiler = StepProfiler(args.warmup, args.profile, cuda) if args.profile else None
    if profiler:
        callbacks.append(profiler.callback())
    _reset_memory(cuda)
    run_dir = train(cfg, callbacks=callbacks)
    result = meter.result()
    if profiler and profiler.summary:
        result["profile"] = profiler.summary
    manifest = json.loads((run_dir / "manifest.json").read_text())
    result["settings"] = {k: manifest["config"]["train"][k] for k in
                          ("method", "per_device_train_batch_size", "packing", "gradient_checkpointing", "max_length")}
    result["settings"]["resolved"] = manifest.get("resolved_train", {})
    result["losses"] = meter.losses
    return result


# ---------------------------------------------------------------- measuring


class ThroughputMeter:
    """Real tokens and wall time per optimizer step, after `warmup` steps; peak GPU memory."""

    def __init__(self, warmup: int, cuda: bool, count_tokens: bool):
        self.warmup, self.cuda, self.count_tokens = warmup, cuda, count_tokens
        self.tokens_seen = 0
        self.marks: list[tuple[int, float, int]] = []
        self.losses: list[float] = []

    def wrap_collator(self, collate):
        def counted(features):
            batch = collate(features)
            self.tokens_seen += int(batch["attention_mask"].sum())
            return batch

        return counted

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Meter(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs is None or "loss" not in logs:
                    return
                if meter.cuda:
                    import torch

                    torch.cuda.synchronize()
                tokens = meter.tokens_seen if meter.count_tokens else int(logs.get("num_tokens", 0))
                meter.marks.append((state.global_step, time.perf_counter(), tokens))
                meter.losses.append(float(logs["loss"]))

        return Meter()

    def result(self) -> dict:
        import torch

        timed = [m for m in self.marks if m[0] >= self.warmup]
        if len(timed) < 2:
            timed = self.marks[-2:]
        (s0, t0, n0), (s1, t1, n1) = timed[0], timed[-1]
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return {"steps_timed": s1 - s0, "seconds": t1 - t0, "tokens": n1 - n0,
                "tokens_per_s": (n1 - n0) / (t1 - t0) if t1 > t0 else None,
                "steps_per_s": (s1 - s0) / (t1 - t0) if t1 > t0 else None,
                "peak_mem_gb": round(peak, 2) if peak is not None else None}


# Kernel families, matched in order against the lower-cased kernel name (first match wins).
KERNEL_FAMILIES = [
    ("nf4 dequantize (bitsandbytes)", ("dequantize", "kdequant", "bnb")),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "gemv", "aten::mm", "addmm", "bmm")),
    ("dropout (LoRA)", ("bernoulli", "dropout")),
    ("liger / triton fused", ("liger", "triton", "_rms_norm", "_swiglu", "_rope")),
    ("optimizer (AdamW)", ("multi_tensor", "adam", "foreach")),
    ("softmax / loss", ("softmax", "logsumexp", "nll", "cross_entropy")),
    ("reductions", ("reduce",)),
    ("copies / casts", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise")),
]


class StepProfiler:
    """torch.profiler over `steps` optimizer steps after `warmup`: GPU kernel time by family, and how busy the GPU was."""

    def __init__(self, warmup: int, steps: int, cuda: bool):
        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.prof, self.started, self.summary = None, 0.0, None

    def callback(self):
        from transformers import TrainerCallback

        p = self

        class Profile(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == p.warmup and p.prof is None:
                    p.start()

            def on_step_end(self, args, state, control, **kwargs):
                if p.prof is not None and p.summary is None and state.global_step >= p.warmup + p.steps:
                    p.stop()

        return Profile()

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        if self.cuda:
            torch.cuda.synchronize()
        self.prof = profile(activities=activities)
        self.prof.__enter__()
        self.started = time.perf_counter()

    def stop(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.started
        self.prof.__exit__(None, None, None)
        self.summary = summarize_profile(self.prof, wall, self.steps, self.cuda)


def summarize_profile(prof, wall_s: float, steps: int, cuda: bool) -> dict:
    """GPU time per kernel family (or CPU op time without a GPU), the busiest kernels, and GPU busy = kernel time / wall;
    plus where the host's time went (see host_time)."""
    from torch.autograd import DeviceType

    rows, host_rows = [], []
    for e in prof.key_averages():
        on_gpu = getattr(e, "device_type", None) == DeviceType.CUDA
        if not on_gpu:
            host_rows.append((e.key, e.self_cpu_time_total / 1e6, e.count))
        if cuda and not on_gpu:
            continue
        us = getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total
        if us > 0:
            rows.append((e.key, us / 1e6, e.count))
    total = sum(r[1] for r in rows) or 1e-9
    families: dict[str, float] = {}
    for key, s, _ in rows:
        name = key.lower()
        family = next((f for f, words in KERNEL_FAMILIES if any(w in name for w in words)), "other")
        families[family] = families.get(family, 0.0) + s
    top = sorted(rows, key=lambda r: -r[1])[:15]
    kernels = sum(n for _, _, n in rows) if cuda else 0
    return {"steps": steps, "wall_s": round(wall_s, 3), "kernel_s": round(total, 3),
            "gpu_busy": round(total / wall_s, 3) if cuda else None,
            "families": {f: round(v / total, 4) for f, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": k[:160], "share": round(s / total, 4), "calls": n} for k, s, n in top],
            "host": host_time(host_rows, wall_s, steps, kernels, total)}


# Host-side events by what they cost: CUDA runtime calls by kind, then the operators' own CPU time.
HOST_KINDS = [("waiting on the GPU (syncs)", ("synchronize",)),
              ("kernel launches", ("launchkernel", "culaunch")),
              ("allocations and copies", ("cudamalloc", "cudafree", "cudamemcpy", "cudamemset", "cudahostalloc")),
              ("other CUDA runtime calls", ("cu",)),
              ("operators (dispatch, autograd)", ("",))]


def host_time(rows: list[tuple[str, float, int]], wall_s: float, steps: int, kernels: int, kernel_s: float) -> dict:
    """Where the host's wall time went, from the profiler's CPU events (self time, all threads): each HOST_KINDS
    share of the wall, and the rest, outside any recorded event (Python: Trainer, PEFT and bitsandbytes wrappers,
    the collator). With few, short kernels per step, launches and Python time bound the step, not the GPU."""
    kinds = dict.fromkeys([k for k, _ in HOST_KINDS], 0.0)
    for key, s, _ in rows:
        name = key.lower()
        if name.startswith("profilerstep") or name.startswith("[memory]"):
            continue
        kind = next(k for k, words in HOST_KINDS if any(name.startswith(w) for w in words))
        kinds[kind] += s
    recorded = sum(kinds.values())
    shares = {k: round(v / wall_s, 4) for k, v in kinds.items()}
    shares["outside recorded events (Python)"] = round(max(0.0, wall_s - recorded) / wall_s, 4)
    return {"share_of_wall": shares, "kernels_per_step": round(kernels / max(steps, 1)),
            "mean_kernel_us": round(1e6 * kernel_s / kernels, 1) if kernels else None}


def render_profile(p: dict) -> str:
    busy = f", GPU busy {p['gpu_busy']:.0%} of wall" if p.get("gpu_busy") is not None else ""
    lines = [f"### {p['name']}: {p['steps']} steps, {p['wall_s']:.2f} s wall, {p['kernel_s']:.2f} s in kernels{busy}",
             "", "| kernel family | share of kernel time |", "|---|---|"]
    lines += [f"| {f} | {v:.1%} |" for f, v in p["families"].items()]
    lines += ["", "| top kernel | share | calls |", "|---|---|---|"]
    lines += [f"| `{k['name'][:90]}` | {k['share']:.1%} | {k['calls']} |" for k in p["top_kernels"][:10]]
    host = p.get("host")
    if host:
        if host["kernels_per_step"]:
            lines += ["", f"{host['kernels_per_step']:,} GPU kernels per step, {host['mean_kernel_us']} µs each on average."]
        lines += ["", "| host time | share of wall |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in host["share_of_wall"].items()]
    return "\n".join(lines)


def _reset_memory(cuda: bool) -> None:
    if cuda:
        import torch

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def flops_per_token(model_dir: Path, lora_params: int, mean_len: float) -> float:
    """4*N_frozen + 6*N_lora + causal attention (6 * layers * hidden * example length), per real token."""
    h, i, layers, q, kv, vocab = _shape(model_dir)
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * i  # q, o, k, v projections + gated MLP
    # The embedding lookup does no FLOPs; the lm_head matmul is counted once whether or not its weight is tied to
    # the embedding (Qwen2.5-1.5B, SmolLM2): tying shares the parameters, not the work. It is counted for every
    # token, as MFU's "model FLOPs" do, though TRL's fused LM head projects only the completion's positions.
    frozen = layers * per_layer + h * vocab
    return 4 * frozen + 6 * lora_params + 6 * layers * h * mean_len


def _shape(model_dir: Path) -> tuple[int, int, int, int, int, int]:
    """(hidden, intermediate, layers, query width, key/value width, vocab) from the model's config; the head
    width from `head_dim` where the config has one (it need not be hidden / heads)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads * head_dim,
            c.num_key_value_heads * head_dim, c.vocab_size)


def mfu(result: dict, model_dir: Path, peak: float | None, ceiling: float | None) -> dict:
    if not result.get("tokens_per_s"):
        return {"mfu": None, "mfu_vs_matmul": None}
    lora = result.get("lora_params") or _lora_params(model_dir)
    mean_len = result.get("mean_len") or 512
    achieved = flops_per_token(model_dir, lora, mean_len) * result["tokens_per_s"] / 1e12
    return {"achieved_tflops": round(achieved, 2),
            "mfu": round(achieved / peak, 4) if peak else None,
            "mfu_vs_matmul": round(achieved / ceiling, 4) if ceiling else None}


def _lora_params(model_dir: Path, r: int = 16) -> int:
    h, i, layers, q, kv, _ = _shape(model_dir)
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # all-linear: never the (tied) lm_head
    return layers * sum(r * (a + b) for a, b in shapes)


def render_table(runs: list[dict]) -> str:
    lines = ["| run | tokens/s | MFU (spec) | MFU (matmul) | peak GB | steps/s |", "|---|---|---|---|---|---|"]
    by_model: dict[str, dict[str, dict]] = {}
    for r in runs:
        by_model.setdefault(r["model"], {})[r["name"].split("/")[-1]] = r
        fmt = lambda v, p="{:.1%}": p.format(v) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"| {r['name']} | {fmt(r['tokens_per_s'], '{:,.0f}')} | {fmt(r['mfu'])} | {fmt(r['mfu_vs_matmul'])} "
                     f"| {fmt(r['peak_mem_gb'], '{:.1f}')} | {fmt(r['steps_per_s'], '{:.2f}')} |")
    for model, pair in by_model.items():
        base = pair.get("baseline", {}).get("tokens_per_s")
        for kind, r in pair.items():
            if base and kind.startswith("text2sql") and r.get("tokens_per_s"):
                lines.append(f"\n{model}: {kind} / baseline tokens/s = {r['tokens_per_s'] / base:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
