"""How `text2sql.train` runs fast on this machine: the `auto` train.* settings resolved, and what carries them out.

`speed_settings` picks packing, micro-batch, accumulation, gradient checkpointing, Liger and regional compilation;
`fit_micro_batch` is its memory estimate (a pure function of the model's shape and the memory budget), `memory_budget`
that budget (what train.max_memory_gb says, else what the GPU has, or what other processes left of it);
`compile_decoder_layers` compiles the decoder layers in place; `set_expandable_segments` tunes the CUDA allocator.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

from text2sql.config import Config
from text2sql.errors import ConfigError

# Activation bytes per token and layer without checkpointing, and with it (the layer input alone is kept).
# Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") count ~34 * hidden
# for bf16; (Q)LoRA adds the adapters' inputs and outputs and the dequantized weights' buffers: measured on an
# H200, QLoRA peaked at ~64 * hidden per layer and token (8B-class, 2k tokens) and ~40 (SmolLM2-135M). 72 keeps margin.
_ACT_BYTES_PER_HIDDEN = 72
_CKPT_BYTES_PER_HIDDEN = 2
_WEIGHT_BYTES = {"qlora": 0.56, "lora": 2.0, "full": 16.0}  # per parameter: NF4 + double-quant scales; bf16; fp32 + Adam
_RESERVED_BYTES = 2 * 2**30  # CUDA workspaces, the optimizer's LoRA state, fragmentation
_DEVICE_SHARE = 0.8  # of the GPU's memory, when train.max_memory_gb is 0
# Kept back when free memory sets the budget (another training holds part of the GPU): the other process's allocator
# may still grow a little. This process's own CUDA context (~0.5 GiB) is already counted as used.
_FREE_MARGIN_BYTES = 2**30
_GIB = 2**30
# No vocab-sized bytes per token: TRL's SFTTrainer (>= 1.16, the [train] extra's pin) scores the loss through its own
# fused LM head, projecting a chunk of completion positions at a time, never the whole batch's logits. It turns Liger's
# fused linear cross-entropy off for that reason, so with or without Liger no vocab-sized tensor per token is held.


def speed_settings(cfg: Config, method: str, cuda: bool, base_dir: Path, lengths: list[int]) -> dict:
    """Packing, micro-batch, accumulation, checkpointing, Liger and compilation for this model on this device.

    Explicit `train.*` values win; `auto` ones are chosen here. An optimizer step always sees about
    `per_device_train_batch_size * gradient_accumulation_steps` examples (packed rows are counted by the
    examples they hold), so the loss curve does not depend on what fits in memory. On a GPU another process
    already uses, the auto micro-batch fits what it left (`memory_budget`), and says so on stderr.

    Raises:
        ConfigError: train.compile true with gradient checkpointing on (set, or needed to fit the memory budget), or
            with Liger's kernels on.
    """
    t = cfg.train
    mean_len = sum(lengths) / max(len(lengths), 1)
    # Padding-free packing flattens a micro-batch into one sequence. Only flash-attention's varlen kernel
    # then skips the cross-example blocks; SDPA would attend over the whole flat sequence under a
    # block-diagonal mask (quadratic in micro-batch x length), so auto packs only with flash-attention.
    packing = t.packing if isinstance(t.packing, bool) else bool(cuda and attention_implementation(cuda) == "flash_attention_2"
                                                                    and mean_len <= 0.75 * t.max_length)
    # Without packing, batches of similar lengths waste little on padding (a GPU-only trick: it reorders).
    group_by_length = bool(cuda and not packing)
    per_row = max(1.0, 0.95 * t.max_length / mean_len) if packing else 1.0  # BFD fills rows ~95 %
    rows = max(1, math.ceil(t.per_device_train_batch_size / per_row))
    row_tokens = t.max_length if packing else max(lengths, default=t.max_length)
    checkpointing = t.gradient_checkpointing if isinstance(t.gradient_checkpointing, bool) else False
    micro = t.micro_batch_size or rows
    free, total = _gpu_free_and_total() if cuda else (None, None)  # at start: the OOM error says what others held
    memory = None
    if cuda and (t.micro_batch_size <= 0 or t.gradient_checkpointing == "auto"):
        memory = memory_budget(total, free, t.max_memory_gb)
        if t.max_memory_gb <= 0 and memory < _DEVICE_SHARE * total:
            print(f"train: {(total - free) / _GIB:.1f} GiB of this GPU are in use by other processes: the auto "
                  f"micro-batch fits the {memory / _GIB:.1f} GiB left (train.max_memory_gb sets it)", file=sys.stderr)
        micro, checkpointing = fit_micro_batch(_model_shape(base_dir), method, rows, row_tokens, memory,
                                               t.micro_batch_size, t.gradient_checkpointing)
    accumulation = math.ceil(rows / micro) * t.gradient_accumulation_steps
    liger = t.liger if isinstance(t.liger, bool) else cuda and _liger_available()
    if t.compile is True and checkpointing:
        why = "train.gradient_checkpointing is true" if t.gradient_checkpointing is True else (
            "a micro-batch of one does not fit in memory without gradient checkpointing (train.max_memory_gb)")
        raise ConfigError(f"train.compile: true cannot be combined with gradient checkpointing ({why}): the recomputed "
                          "layers would run outside the compiled graphs; set train.compile to false or auto, or give "
                          "train.max_memory_gb more room")
    if t.compile is True and liger:  # measured on an H200 (torch 2.11, liger-kernel 0.8.5): dynamo fails in its RMSNorm
        raise ConfigError("train.compile: true cannot be combined with Liger's kernels (torch.compile fails inside "
                          "their Triton RMSNorm): set train.liger to false, or train.compile to false or auto")
    if isinstance(t.compile, bool):
        compiled = t.compile and compile_available(cuda)  # no compiler here: train uncompiled, as with false
    else:
        compiled = cuda and not checkpointing and not liger and compile_available(cuda)
    return {"packing": packing, "micro_batch_size": micro, "gradient_accumulation_steps": accumulation,
            "gradient_checkpointing": checkpointing, "group_by_length": group_by_length, "liger": liger,
            "compile": compiled, "drop_padding_mask": t.drop_padding_mask and not packing,
            "mean_example_tokens": round(mean_len, 1),
            # GiB, None on a CPU; the budget only when the auto micro-batch or checkpointing was fitted to it
            "gpu_total_gib": _gib(total), "gpu_in_use_gib": _gib(total - free) if cuda else None,
            "memory_budget_gib": _gib(memory)}


def memory_budget(total_bytes: float, free_bytes: float, max_memory_gb: float) -> float:
    """Bytes the auto micro-batch fits under: train.max_memory_gb when set, else the smaller of 80 % of the GPU and
    what is free at start less 1 GiB (another training may hold part of the GPU), never below 0.

    >>> gib = 2**30
    >>> memory_budget(140 * gib, 139.5 * gib, 0) / gib  # the GPU to itself
    112.0
    >>> memory_budget(140 * gib, 65 * gib, 0) / gib  # another training holds 75 GiB
    64.0
    >>> memory_budget(140 * gib, 65 * gib, 100) / gib  # train.max_memory_gb wins
    100.0
    """
    if max_memory_gb > 0:
        return max_memory_gb * _GIB
    return max(0.0, min(_DEVICE_SHARE * total_bytes, free_bytes - _FREE_MARGIN_BYTES))


def fit_micro_batch(shape: tuple[int, int, int, int], method: str, rows: int, row_tokens: int, memory_bytes: float,
                    micro_batch_size: int = 0, checkpointing: bool | str = "auto") -> tuple[int, bool]:
    """(micro-batch, gradient checkpointing) under `memory_bytes` for a model of `shape` (layers, hidden, vocab,
    parameters) training `rows` rows of `row_tokens` tokens per optimizer step; a positive `micro_batch_size` and a
    bool `checkpointing` are kept as given. Checkpointing goes on when one row would not fit without it; the
    micro-batch is the largest divisor of `rows` that fits (so no step over- or undershoots), at least 1.

    >>> fit_micro_batch((28, 1536, 151936, 1_900_000_000), "qlora", 16, 2200, 141 * 0.8 * 2**30)
    (16, False)
    >>> fit_micro_batch((28, 1536, 151936, 1_900_000_000), "qlora", 16, 2200, 8 * 2**30)
    (8, True)
    """
    layers, hidden, _vocab, params = shape
    budget = memory_bytes - params * _WEIGHT_BYTES[method] - _RESERVED_BYTES

    def row_bytes(ckpt: bool) -> float:
        per_token = layers * hidden * (_CKPT_BYTES_PER_HIDDEN if ckpt else _ACT_BYTES_PER_HIDDEN)
        per_token += hidden * _ACT_BYTES_PER_HIDDEN * ckpt  # the layer being recomputed
        return row_tokens * per_token

    ckpt = checkpointing if isinstance(checkpointing, bool) else row_bytes(False) > budget
    if micro_batch_size > 0:
        return micro_batch_size, ckpt
    micro = max((d for d in range(1, rows + 1) if rows % d == 0 and d * row_bytes(ckpt) <= budget), default=1)
    return micro, ckpt


def compile_decoder_layers(model) -> int:
    """Regional compilation: each decoder layer compiled in place (`nn.Module.compile`), not the whole model; returns
    how many. One layer's graph serves them all (same code, same shapes), so it compiles about once; `dynamic=True`
    because batch lengths vary. In place, not accelerate's `compile_regions`: that wraps each layer in a new
    module, which would put `_orig_mod.` into the parameter names PEFT saves the adapter under."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_decoder().layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def compile_available(cuda: bool) -> bool:
    """torch.compile can build kernels here: Triton on a CUDA GPU, a C++ compiler on the CPU."""
    try:
        import torch
        import torch._dynamo

        if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
            return False
        if cuda:
            from torch.utils._triton import has_triton

            return has_triton()
    except ImportError:
        return False
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def attention_implementation(cuda: bool) -> str:
    """flash_attention_2 on a GPU where flash-attn is installed, else SDPA."""
    if cuda:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def set_expandable_segments(on: bool) -> None:
    """Turn the CUDA allocator's expandable segments on or off for allocations from now on, unless the user
    set PYTORCH_CUDA_ALLOC_CONF. Batches of varying length (group_by_length) otherwise leave the allocator
    splitting and caching odd-sized blocks: +11% tokens/s for SmolLM2-135M on the H200
    (bench/results/train_throughput_135m.json)."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    import torch

    # Private, but there since torch 2.1 (vLLM toggles it the same way); its name moved in torch 2.12.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(
        torch.cuda.memory, "_set_allocator_settings", None)
    try:
        if setter is not None:
            setter(f"expandable_segments:{on}")
    except RuntimeError:  # a build that cannot: keep the default allocator
        pass


def _liger_available() -> bool:
    """liger-kernel and the Triton it compiles with both import (it ships as pure Python; Triton may be missing)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _model_shape(base_dir: Path) -> tuple[int, int, int, int]:
    """(layers, hidden size, vocab size, parameter count) from a model dir's config."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(base_dir)
    layers, hidden, vocab = c.num_hidden_layers, c.hidden_size, c.vocab_size
    inter = getattr(c, "intermediate_size", 4 * hidden)
    params = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
    return layers, hidden, vocab, params


def _gpu_free_and_total() -> tuple[int, int]:
    """(free, total) bytes of this process's GPU, as the driver sees it: other processes' memory is not free."""
    import torch

    return torch.cuda.mem_get_info(torch.cuda.current_device())


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / _GIB, 1)
