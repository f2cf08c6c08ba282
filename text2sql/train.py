"""Supervised fine-tuning with TRL's SFTTrainer on prompt/completion records (`text2sql.merge` merges adapters).

Recipe (`train`): check settings -> pairs (train, dev) -> base model dir -> tokenizer with `<|im_end|>`
as eos -> prompt/completion records from `text2sql.prompt` (none longer than max_length) -> run dir and
manifest -> model (4-bit for qlora) -> SFTConfig -> SFTTrainer -> train (or resume) -> save the
adapter/model, prompt settings, manifest.

Features and knobs (the `train` section of text2sql.yaml):
- methods: `qlora` (NF4 + double quantization, bf16 compute, LoRA on all linear layers; CUDA only),
  `lora` (bf16 base on a GPU, float32 on CPU), `full`; `auto` = qlora on CUDA, lora on CPU.
- loss on the completion only (TRL `completion_only_loss`); the chat template ends the completion
  with `<|im_end|>`, so the end-of-turn token is inside the loss mask and the model learns to stop.
- `packing`: TRL's best-fit-decreasing packing, padding-free (one flat sequence with position ids
  restarting at 0 per example). Attention then stays within each example: flash-attention uses the
  sequence boundaries; SDPA/eager get a block-diagonal mask that transformers builds from the position
  ids when there is no attention mask and no KV cache (so `use_cache` is off while training).
- `drop_padding_mask`: right-padded (unpacked) batches train without their padding mask, so SDPA takes its
  causal flash kernel; `liger`: Liger's RMSNorm/SwiGLU/RoPE kernels when installed (CUDA); `compile`: regional
  compilation (each decoder layer torch.compiled); `max_memory_gb`: the budget the auto micro-batch fits under
  (0: 80 % of the GPU, or what other processes left free of it; `text2sql.train_speed` resolves these). CUDA
  running out of memory in training is a one-line ConfigError naming these settings, the manifest says `failed`.
- answers longer than `generate.max_new_tokens` tokens: a warning, and their count in the manifest.
- `gradient_checkpointing`, eval loss on dev every `eval_steps` (when the dataset has a dev split; 0 = none),
  checkpoints every `save_steps` (`--resume` continues from the last complete one), logs to
  TensorBoard (`<run>/runs/`) and `<run>/log.jsonl`, a progress bar.
- every run dir holds `manifest.json` (base model + weights sha256, dataset hash, schema fingerprint,
  resolved config, package versions, git commit), `prompt.json` (so predict/serve rebuild the same
  prompt), `held_prompts.json` (a few dev prompts `merge` uses for its parity check) and
  `train_sample.json` (the first training sequence with its loss mask, decoded).
- several GPUs (`text2sql.distributed`): the same command under `torchrun` or `accelerate launch` (configs/accelerate/). DDP by
  default (each rank holds the whole, possibly 4-bit, base on GPU LOCAL_RANK); FSDP when accelerate says
  so (ACCELERATE_USE_FSDP), with the 4-bit weights stored as bf16 so FSDP can shard them. Rank 0 alone
  writes the run dir (its name is broadcast); `--resume` needs the world size recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from text2sql.config import Config, dump_config
from text2sql.data import load_pairs
from text2sql.data.synthesize import load_synthetic
from text2sql.distributed import (
    RANK_REPORT,
    RANK_REPORT_ENV,
    fsdp_enabled,
    from_rank_zero,
    init_distributed,
    local_rank,
    rank_reporter,
)
from text2sql.errors import TRAIN_PACKAGES, ConfigError, DataError, ModelError, require, require_all
from text2sql.files import read_json_or_empty, write_atomic
from text2sql.models import resolve_base_model, set_end_of_turn, weights_sha256
from text2sql.prompt import PromptBuilder
from text2sql.train_speed import attention_implementation, compile_decoder_layers, set_expandable_segments, speed_settings
from text2sql.vocab import METHODS


MANIFEST = "manifest.json"
HELD_PROMPTS = "held_prompts.json"
LOG_FILE = "log.jsonl"
TRAIN_SAMPLE = "train_sample.json"
"""The first training sequence as the trainer feeds it: token ids, labels (-100 = no loss) and both decoded."""
HELD_PROMPT_COUNT = 8
QLORA_QUANT_TYPE = "nf4"
QLORA_DOUBLE_QUANT = True
"""How `qlora` quantizes the base (bitsandbytes); `merge --onto nf4` rebuilds the same weights."""
_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "bitsandbytes")


def train(cfg: Config, resume: bool = False, callbacks: list | None = None, force: bool = False) -> Path:
    """Fine-tune the base model on the dataset's train split; returns the run dir.

    `callbacks` are extra transformers TrainerCallbacks (benchmarks and tests measure through them).
    `force` replaces an existing run dir of the same name (`train.run_name`); without it that is refused.

    Raises:
        ConfigError: unknown method, qlora or FSDP without CUDA, packing without max_length, `resume` on
            another number of processes than the run was trained on; CUDA ran out of memory while training (the
            manifest then says `failed`; train.max_memory_gb or train.micro_batch_size make it fit).
        DataError: the dataset has no train split, or its definitions.yaml names a column schemas/ lacks.
        ModelError: the base model cannot be resolved; `resume` finds no checkpoint; the run dir exists
            (without `force`).
        MissingDependencyError: a package of the [train] extra (torch, transformers, peft, trl, ...) is not installed.
    """
    require_all(TRAIN_PACKAGES, "train")
    import torch

    # Everything that can be wrong with the settings, the data or the base model fails here, before
    # a run dir is made or any weights load.
    cuda = torch.cuda.is_available()
    if cuda:
        set_expandable_segments(True)
    rank, world_size = init_distributed(cuda)
    main = rank == 0  # under torchrun/accelerate launch only the first process writes the run dir
    method = resolve_method(cfg.train.method, cuda)
    _check_device(method)
    dataset = cfg.data.dataset
    train_pairs, dev_pairs = _load_splits(cfg, dataset)
    base_dir = resolve_base_model(cfg)
    tokenizer = _load_tokenizer(base_dir)
    # The one prompt builder (predict and serve rebuild it from the run's prompt.json); a pair never retrieves
    # itself as a k-shot example, in training as in prediction.
    prompts = PromptBuilder.for_training(cfg, tokenizer, train_pairs, dataset)
    train_records, dev_records = [prompts.record(p) for p in train_pairs], [prompts.record(p) for p in dev_pairs]
    lengths = _check_lengths(train_records + dev_records, tokenizer, cfg.train.max_length)
    over, longest = _answers_over(train_pairs, tokenizer, cfg.generate.max_new_tokens)
    speed = speed_settings(cfg, method, cuda, base_dir, lengths)
    # Rank 0 picks (or finds) the run dir; every rank gets its answer, or its error.
    run_dir, checkpoint = from_rank_zero(rank, world_size, _prepare_run_dir, cfg, resume, world_size, force)

    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    manifest: dict = {}
    if main:
        print(f"train: method {method} on {device}" + (f" x {world_size} processes" if world_size > 1 else "") +
              f"; {len(train_records)} train ({cfg.train.splits}) / {len(dev_records)} dev examples; base {base_dir}; "
              f"run dir {run_dir}",
              file=sys.stderr)
        if cfg.train.method == "auto" and not cuda:
            print("train: no CUDA GPU, so method auto trains LoRA in float32 on the CPU (slow; for small budgets)",
                  file=sys.stderr)
        # The manifest is written before the weights load, so even a run killed at once says what it was.
        dbs = sorted({p.db for p in train_pairs + dev_pairs}, key=str)
        schemas = {str(db): prompts.schema(db).fingerprint for db in dbs}
        manifest = _manifest(cfg, method, base_dir, train_pairs, dev_pairs, schemas, device, run_dir, checkpoint)
        manifest["resolved_train"] = speed
        manifest["world_size"] = world_size  # `--resume` needs the same number of processes
        manifest.update(answers_over_max_new_tokens=over, longest_answer_tokens=longest)
        if over:  # the model would learn them whole, then predict and serve would stop it mid-query
            print(f"train: {over} of {len(train_pairs)} train answers are longer than generate.max_new_tokens="
                  f"{cfg.generate.max_new_tokens} tokens (longest {longest}): predict and serve would cut them off; "
                  "raise generate.max_new_tokens", file=sys.stderr)
        print(f"train: speed settings {speed}", file=sys.stderr)
        _write_json(run_dir / MANIFEST, manifest)
        _write_json(run_dir / HELD_PROMPTS, [r["prompt"] for r in (dev_records or train_records)[:HELD_PROMPT_COUNT]])
        prompts.save(run_dir)
    if os.environ.get(RANK_REPORT_ENV):
        callbacks = [*(callbacks or []), rank_reporter(run_dir / RANK_REPORT.format(rank=rank), rank, world_size)]

    model = _load_model(base_dir, method, cuda)
    set_end_of_turn(tokenizer, model)
    trainer = _trainer(cfg, method, cuda, model, tokenizer, run_dir, train_records, dev_records, speed, callbacks or [])
    if main:
        _write_json(run_dir / TRAIN_SAMPLE, _sample(trainer.train_dataset[0], tokenizer))
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        metrics = dict(result.metrics)
        if dev_records and cfg.train.eval_steps:  # the Trainer has evaluated the last step if eval_steps divides it: not twice
            last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), {})
            done = last.get("step") == trainer.state.global_step
            metrics.update({k: v for k, v in last.items() if k.startswith("eval_")} if done else trainer.evaluate())
    except torch.cuda.OutOfMemoryError as exc:  # = torch.OutOfMemoryError (torch >= 2.5); this name works from 2.4 on
        message = out_of_memory_message(str(exc), speed, last_checkpoint(run_dir))
        for callback in trainer.callback_handler.callbacks:  # end the Trainer's tqdm line: the error gets its own
            for bar in (getattr(callback, "prediction_bar", None), getattr(callback, "training_bar", None)):
                if bar is not None:
                    bar.close()
        if main:  # the run dir stays as it is, checkpoints and all; its manifest says how it ended
            _end_manifest(run_dir, manifest, status="failed", failed=_now(), global_step=trainer.state.global_step,
                          error=message)
        raise ConfigError(message) from exc

    if trainer.is_fsdp_enabled:  # checkpoints may be sharded (fast to resume); the run dir needs a loadable adapter
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # The adapter (lora/qlora) or the whole model (full), + tokenizer. Every rank calls it (FSDP gathers the
    # shards); the Trainer writes on rank 0 only.
    trainer.save_model(str(run_dir))
    if main:
        _end_manifest(run_dir, manifest, status="completed", finished=_now(), global_step=trainer.state.global_step,
                      metrics=metrics)
    trainer.accelerator.wait_for_everyone()  # no rank returns before the run dir is complete
    return run_dir


def _end_manifest(run_dir: Path, manifest: dict, **ending: Any) -> None:
    """Write the manifest as the run ended (`ending`: status and the rest), keeping what callbacks wrote into it
    meanwhile (the dev-EX curve of text2sql.checkpoints)."""
    _write_json(run_dir / MANIFEST, {**read_json_or_empty(run_dir / MANIFEST), **manifest, **ending})


def resolve_method(method: str, cuda: bool) -> str:
    """The training method to use: `auto` becomes qlora on CUDA, lora elsewhere.

    >>> resolve_method("auto", cuda=False)
    'lora'
    """
    if method not in METHODS:
        raise ConfigError(f"train.method: {method!r} is not one of {', '.join(METHODS)}")
    if method == "auto":
        return "qlora" if cuda else "lora"
    return method


def out_of_memory_message(error: str, speed: dict, checkpoint: Path | None) -> str:
    """One line for CUDA running out of memory in training: at what micro-batch, whether other processes held
    GPU memory at start (`speed` is `speed_settings`'s answer), and the settings that make it fit.

    >>> speed = {"micro_batch_size": 8, "gradient_checkpointing": False, "gpu_total_gib": 139.7, "gpu_in_use_gib": 75.2}
    >>> print(out_of_memory_message("CUDA out of memory. Tried to allocate 370.00 MiB. GPU 0 has", speed, None))
    ... # doctest: +NORMALIZE_WHITESPACE
    out of GPU memory at micro-batch 8 (gradient checkpointing off; tried to allocate 370.00 MiB); 75.2 of 139.7 GiB
    of the GPU were in use by other processes at start: set train.max_memory_gb (e.g. 55 each when two trainings share
    this GPU) or a lower train.micro_batch_size; no checkpoint was saved, so train again
    """
    import re

    tried = re.search(r"Tried to allocate ([\d.]+ \w+)", error)
    what = f"out of GPU memory at micro-batch {speed['micro_batch_size']} (gradient checkpointing " + (
        "on" if speed["gradient_checkpointing"] else "off") + (f"; tried to allocate {tried.group(1)})" if tried else ")")
    total, in_use = speed.get("gpu_total_gib"), speed.get("gpu_in_use_gib")
    if in_use is None:
        others, share = "", "e.g. 40 % of the GPU each when two trainings share it"
    else:  # below 1 GiB it is this process's own CUDA context
        others = (f"; {in_use:g} of {total:g} GiB of the GPU were in use by other processes at start" if in_use > 1
                  else "; no other process held GPU memory at start")
        # 80 % is the auto budget of a training alone on the GPU: two side by side get half of it each
        share = f"e.g. {int(0.4 * total)} each when two trainings share this GPU"
    resume = f"--resume continues from {checkpoint.name}" if checkpoint else "no checkpoint was saved, so train again"
    return f"{what}{others}: set train.max_memory_gb ({share}) or a lower train.micro_batch_size; {resume}"


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint a killed run finished writing (trainer_state.json is written last), or None."""
    steps = []
    for path in Path(run_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and path.is_dir():
            steps.append((int(suffix), path))
    for step, path in sorted(steps, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("global_step") == step:
            return path
    return None


# ---------------------------------------------------------------- recipe steps


def _check_device(method: str) -> None:
    """What this machine cannot do (the config's own values are checked when it is loaded): fail before any weights load."""
    import torch

    if method == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("train.method: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora (or auto) on this machine")
        require("bitsandbytes", "train")
    if fsdp_enabled() and not torch.cuda.is_available():
        raise ConfigError("FSDP (an accelerate FSDP config, ACCELERATE_USE_FSDP) needs CUDA GPUs; on CPUs launch DDP: "
                          "torchrun --nproc_per_node N or configs/accelerate/ddp.yaml")


def _check_lengths(records: list[dict], tokenizer, max_length: int) -> list[int]:
    """TRL would cut an over-long example at max_length, i.e. drop the end of its SQL and its eos: refuse instead."""
    lengths = [len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
               for r in records]
    too_long = [n for n in lengths if n > max_length]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} of {len(records)} examples are longer than train.max_length={max_length} tokens "
            f"(longest {max(too_long)}): raise train.max_length or lower prompt.max_schema_tokens"
        )
    return lengths


def _answers_over(pairs, tokenizer, max_new_tokens: int) -> tuple[int, int]:
    """(how many pairs' SQL is longer than `max_new_tokens` tokens, the longest in tokens): generation stops there."""
    lengths = [len(tokenizer(p.sql.strip(), add_special_tokens=False)["input_ids"]) for p in pairs]
    return sum(n > max_new_tokens for n in lengths), max(lengths, default=0)


def _prepare_run_dir(cfg: Config, resume: bool, world_size: int = 1, force: bool = False) -> tuple[Path, Path | None]:
    """The run dir (new, or the one to resume) and the checkpoint to resume from; `force` empties an existing one."""
    root = cfg.path(cfg.train.output_dir)
    if not resume:
        name = cfg.train.run_name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = root / name
        if run_dir.exists() and any(run_dir.iterdir()):
            if not force:
                raise ModelError(f"run dir {run_dir} exists: --resume continues it, --force replaces it, "
                                 "or set another train.run_name")
            shutil.rmtree(run_dir)  # --force
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, None
    if cfg.train.run_name:
        run_dir = root / cfg.train.run_name
    else:  # the run whose manifest changed last
        runs = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ModelError(f"nothing to resume: no run under {root}")
        run_dir = runs[-1].parent
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise ModelError(f"nothing to resume in {run_dir}: no complete checkpoint-* (train.save_steps sets how often they are written)")
    # A checkpoint holds one RNG state per rank, and the data order and batch size depend on the world size.
    trained_on = read_json_or_empty(run_dir / MANIFEST).get("world_size", 1)
    if trained_on != world_size:
        how = ("as one plain process" if trained_on == 1 else
               f"with `torchrun --nproc_per_node {trained_on}` (or `accelerate launch --num_processes {trained_on}`)")
        raise ConfigError(f"cannot resume {run_dir} on {world_size} process(es): it was trained on {trained_on}; relaunch {how}")
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    for partial in run_dir.glob("checkpoint-*"):  # checkpoints a kill left half-written
        suffix = partial.name.removeprefix("checkpoint-")
        if suffix.isdigit() and int(suffix) > step:
            shutil.rmtree(partial)
    print(f"train: resuming {run_dir} from {checkpoint.name}", file=sys.stderr)
    return run_dir, checkpoint


def _load_splits(cfg: Config, dataset: str) -> tuple[list, list]:
    try:
        train_pairs = load_pairs(cfg, dataset, "train")
    except DataError as exc:
        raise DataError(f"dataset {dataset!r} has no usable train split ({exc}); run `text2sql data split`") from exc
    if not train_pairs:
        raise DataError(f"dataset {dataset!r} has no train split: run `text2sql data split`")
    try:
        dev_pairs = load_pairs(cfg, dataset, "dev")
    except DataError:
        dev_pairs = []  # eval loss is optional
    if cfg.train.splits == "train+dev":  # the release model: dev chose the recipe, now it is more examples
        train_pairs, dev_pairs = train_pairs + dev_pairs, []
    if cfg.data.synthetic != "exclude":  # unreviewed `data synthesize` candidates, beside the curated pairs only
        train_pairs = train_pairs + load_synthetic(cfg, dataset, train_pairs)
    return train_pairs, dev_pairs


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_dir}: the tokenizer has no chat template; use an instruct/chat base model")
    set_end_of_turn(tokenizer)
    return tokenizer


def _load_model(base_dir: Path, method: str, cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": attention_implementation(cuda)}
    if method == "full":
        kwargs["dtype"] = torch.float32  # fp32 master weights; bf16 autocast does the compute on a GPU
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        fsdp = fsdp_enabled()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=QLORA_QUANT_TYPE, bnb_4bit_use_double_quant=QLORA_DOUBLE_QUANT,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # FSDP shards float tensors only: pack the 4-bit weights into the compute dtype (= the model dtype).
            bnb_4bit_quant_storage=torch.bfloat16 if fsdp else torch.uint8,
        )
        if not fsdp:  # one GPU or DDP: each rank holds the whole quantized base on its own GPU; FSDP places shards
            kwargs["device_map"] = {"": local_rank()}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    # No KV cache in training: it is useless there, and with it transformers would not build the
    # per-example (block-diagonal) mask that padding-free packing needs under SDPA/eager attention.
    model.config.use_cache = False
    return model


def _trainer(cfg: Config, method: str, cuda: bool, model, tokenizer, run_dir: Path, train_records, dev_records,
             speed: dict, callbacks: list):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    has_dev = bool(dev_records) and t.eval_steps > 0  # eval_steps 0: no dev loss at all (the CPU demo's budget)
    args = SFTConfig(
        output_dir=str(run_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of all steps (transformers >= 5)
        per_device_train_batch_size=speed["micro_batch_size"],
        per_device_eval_batch_size=speed["micro_batch_size"],
        gradient_accumulation_steps=speed["gradient_accumulation_steps"],
        max_length=t.max_length,
        packing=speed["packing"],
        packing_strategy="bfd",  # best-fit decreasing, padding-free: examples are never cut in two
        completion_only_loss=True,
        eos_token=tokenizer.eos_token,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_dev else "no",
        eval_steps=t.eval_steps if has_dev else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=["tensorboard"],
        gradient_checkpointing=speed["gradient_checkpointing"],  # TRL's default is on: say it every time
        dataloader_num_workers=0,
        use_liger_kernel=speed["liger"],
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient; the search costs time each step
    )
    peft_config = None
    if method != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        )
    if speed["group_by_length"] and "train_sampling_strategy" in {f.name for f in dataclasses.fields(SFTConfig)}:
        args.train_sampling_strategy = "group_by_length"
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(dev_records) if has_dev else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_jsonl_logger(run_dir / LOG_FILE), *callbacks],
    )
    if speed["drop_padding_mask"]:
        drop_padding_mask(trainer.model)
    if speed["compile"]:  # after PEFT wrapped the model (SFTTrainer does): the LoRA layers are in the compiled graphs
        compile_decoder_layers(trainer.model)
    return trainer


def drop_padding_mask(model) -> None:
    """Train right-padded batches without their padding mask, so SDPA can take its causal flash kernel.

    TRL's collator pads on the right. Under causal attention a real token only sees earlier positions, all
    real, so the mask changes nothing but the outputs at pad positions, which carry no loss (-100 labels).
    With the mask SDPA falls back to its slower masked kernels. Only in training mode: eval and generation
    (left-padded) keep the mask. Packed, padding-free batches carry position ids and no mask: left alone.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()

    def without_mask(module, args, kwargs):
        if module.training and kwargs.get("position_ids") is None:
            kwargs["attention_mask"] = None
        return args, kwargs

    decoder.register_forward_pre_hook(without_mask, with_kwargs=True)


def _sample(row: dict, tokenizer) -> dict:
    """What the model is trained on, for people and tests: the text outside and inside the loss mask."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    return {
        "input_ids": ids,
        "labels": labels,
        "context": tokenizer.decode([i for i, label in zip(ids, labels) if label == -100]),
        "trained": tokenizer.decode([label for label in labels if label != -100]),
    }


def _jsonl_logger(path: Path):
    """A TrainerCallback appending every log record (loss, lr, eval_loss, ...) to a JSONL file."""
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, "time": _now(), **logs}
                with path.open("a") as f:
                    f.write(json.dumps(record, default=float) + "\n")

    return JsonlLogger()


# ---------------------------------------------------------------- manifest


def _manifest(cfg: Config, method, base_dir, train_pairs, dev_pairs, schemas, device, run_dir, checkpoint) -> dict:
    previous = read_json_or_empty(run_dir / MANIFEST) if checkpoint else {}
    return {
        "run_dir": str(run_dir),
        "status": "running",
        "started": previous.get("started", _now()),
        "resumed": [*previous.get("resumed", []), {"at": _now(), "from": checkpoint.name}] if checkpoint else [],
        "method": method,
        "device": device,
        "base_model": {"name": cfg.model.base, "path": str(base_dir), "weights_sha256": weights_sha256(base_dir)},
        "dataset": {
            "name": cfg.data.dataset,
            "sha256": _pairs_sha256(train_pairs + dev_pairs),
            "splits": cfg.train.splits,
            "train": len(train_pairs),
            "dev": len(dev_pairs),
        },
        "schema_fingerprints": schemas,  # per pair db ("None" = the project's schemas/)
        "config": dump_config(cfg),
        "packages": _package_versions(),
        "python": sys.version.split()[0],
        "git": _git_commit(cfg.root),
    }


def _pairs_sha256(pairs) -> str:
    rows = [[str(p.id), p.question, p.sql, p.db, getattr(p, "split", None)] for p in pairs]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit(root: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                                check=False)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
