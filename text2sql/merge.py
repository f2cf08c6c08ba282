"""Merging a LoRA/QLoRA run's adapter into its base model, and the parity check that the merge changed nothing.

`merge_run(run_dir)`: adapter model -> greedy replies on the run's held prompts -> merge -> save a plain HF
model dir (safetensors, tokenizer, prompt.json, the run's manifest) -> reload it with stock transformers ->
greedy replies again -> `parity.json`. The replies are generated here, one prompt at a time, rather than
through `text2sql.generate` (a later stage): both models see exactly the same input ids, with no padding.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import MODEL_PACKAGES, ModelError, require_all
from text2sql.files import read_json_or_empty, write_atomic
from text2sql.models import adapter_base, set_end_of_turn
from text2sql.prompt import PROMPT_FILE, render_prompt
from text2sql.train import HELD_PROMPTS, MANIFEST, QLORA_DOUBLE_QUANT, QLORA_QUANT_TYPE

if TYPE_CHECKING:
    from text2sql.config import Config

PARITY_FILE = "parity.json"
PARITY_MAX_NEW_TOKENS = 64
MERGED_MANIFEST = "run_manifest.json"
"""The run's manifest.json, as it is called in a merged dir (a merged dir is not a run dir)."""
DTYPES = ("bfloat16", "float32")
ONTO = ("bf16", "nf4")
"""What the adapter is merged onto: the base's own weights, or the base as QLoRA training saw it (NF4 and back)."""


def latest_run(cfg: Config) -> Path:
    """The run dir `train.run_name` names, else the run under `train.output_dir` whose manifest changed last."""
    root = cfg.path(cfg.train.output_dir)
    if cfg.train.run_name:
        return root / cfg.train.run_name
    runs = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ModelError(f"no run under {root}: give a run dir, or train one with `text2sql train`")
    return runs[-1].parent


def choose_checkpoint(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The adapter dir to merge: `last` = the run's final weights, `best` = the checkpoint with the best dev EX
    (`best_checkpoint` in the manifest, see text2sql.checkpoints; the final weights when none was scored), or a
    checkpoint path (or name under the run dir). Reads JSON only.

    Raises:
        ModelError: the chosen dir holds no adapter.
    """
    run_dir = Path(run_dir)
    if checkpoint == "last":
        chosen = run_dir
    elif checkpoint == "best":
        best = read_json_or_empty(run_dir / MANIFEST).get("best_checkpoint")
        chosen = run_dir / best if best and (run_dir / best / "adapter_config.json").is_file() else run_dir
        if chosen == run_dir:
            print(f"merge: no checkpoint of {run_dir} was scored on dev (train.select_by); merging the last weights",
                  file=sys.stderr)
    else:
        chosen = Path(checkpoint) if Path(checkpoint).is_dir() else run_dir / checkpoint
    if not (chosen / "adapter_config.json").is_file():
        why = "it was trained with method full and is already a plain model dir" if (chosen / "config.json").is_file() else "no adapter_config.json"
        raise ModelError(f"cannot merge {chosen}: {why}")
    return chosen


def merge_run(run_dir: str | Path, out: str | Path | None = None, dtype: str = "bfloat16",
              checkpoint: str = "best", force: bool = False, parity_prompts: int | None = None,
              onto: str = "bf16") -> Path:
    """Merge a LoRA/QLoRA run's adapter into its base (bf16 by default, never 4-bit) and save a plain HF model dir.

    `checkpoint` says which adapter (`choose_checkpoint`): by default the checkpoint with the best dev EX.

    The merged dir has safetensors, the tokenizer, a generation config whose eos is the end-of-turn
    token, and the run's prompt.json. Then a parity check: greedy replies of the adapter model and of
    the merged model (reloaded with stock transformers) on the run's held prompts; agreement goes to
    `<out>/parity.json`. Returns the merged dir (default `<run_dir>/merged`). `dtype` (bfloat16 or
    float32) is the dtype of the merge, the parity check and the saved weights. `parity_prompts` checks
    only the first N held prompts (default all of them; the CPU demo checks fewer). An existing `out` is
    replaced only with `force`. `onto="nf4"` first puts every weight that QLoRA quantizes through NF4 and back
    (`nf4_round_trip`): a QLoRA adapter was trained, and its checkpoint chosen by dev EX, against those weights.

    Raises:
        ModelError: not a run dir with an adapter, its base model is missing, or `out` exists (without `force`).
        MissingDependencyError: torch, transformers or peft is not installed.
    """
    require_all((*MODEL_PACKAGES, "peft"), "train")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelError(f"merge dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if onto not in ONTO:
        raise ModelError(f"merge onto {onto!r} is not one of {', '.join(ONTO)}")
    if onto == "nf4":
        require_all(("bitsandbytes",), "train")
    run_dir = Path(run_dir)
    adapter_dir = choose_checkpoint(run_dir, checkpoint)
    base_dir = adapter_base(adapter_dir)
    out = Path(out) if out else run_dir / "merged"
    if out.exists() and not force:
        raise ModelError(f"merged dir {out} exists: --force replaces it, or give another --out")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    held = json.loads((run_dir / HELD_PROMPTS).read_text()) if (run_dir / HELD_PROMPTS).is_file() else []
    held = held[:parity_prompts] if parity_prompts is not None else held

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else run_dir)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype).to(device)
    if onto == "nf4":
        nf4_round_trip(base)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    set_end_of_turn(tokenizer, model)
    adapter_replies = greedy_replies(model, tokenizer, held, PARITY_MAX_NEW_TOKENS)

    merged = model.merge_and_unload()
    set_end_of_turn(tokenizer, merged)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in (PROMPT_FILE, MANIFEST):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / (MERGED_MANIFEST if name == MANIFEST else name))
        # Reload the way any consumer would (stock transformers, no PEFT) before comparing.
        del merged, model, base
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch_dtype).to(device).eval()
        merged_replies = greedy_replies(reloaded, AutoTokenizer.from_pretrained(tmp), held, PARITY_MAX_NEW_TOKENS)
        same = [a == m for a, m in zip(adapter_replies, merged_replies)]
        merged_from = {"checkpoint": adapter_dir.name if adapter_dir != run_dir else "last", "onto": onto,
                       **{k: v for k, v in read_json_or_empty(adapter_dir / "dev_ex.json").items() if k in ("step", "dev_ex")}}
        if (tmp / MERGED_MANIFEST).is_file():
            manifest = {**json.loads((tmp / MERGED_MANIFEST).read_text()), "merged_from": merged_from}
            write_atomic(tmp / MERGED_MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        parity = {
            "merged_from": merged_from,
            "prompts": len(held),
            "agreement": (sum(same) / len(same)) if same else None,
            "max_new_tokens": PARITY_MAX_NEW_TOKENS,
            "dtype": dtype,
            "onto": onto,
            "items": [{"adapter": a, "merged": m, "same": s} for a, m, s in zip(adapter_replies, merged_replies, same)],
        }
        write_atomic(tmp / PARITY_FILE, json.dumps(parity, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def nf4_round_trip(model: Any) -> int:
    """Replace each linear weight that a QLoRA load quantizes (all but the output head) by its NF4 round trip, as
    `train` quantizes it (bf16 weights, QLORA_QUANT_TYPE, QLORA_DOUBLE_QUANT, bitsandbytes' block size).
    Returns how many."""
    import torch
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    head = model.get_output_embeddings()
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                weight = module.weight
                packed, state = quantize_4bit(weight.to(torch.bfloat16), quant_type=QLORA_QUANT_TYPE,
                                              compress_statistics=QLORA_DOUBLE_QUANT)
                weight.copy_(dequantize_4bit(packed, state).to(weight.dtype))
                count += 1
    return count


def greedy_replies(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """One greedy reply per chat (stop at eos; special tokens dropped), one chat at a time: no padding, so
    two models given the same chats see the same input ids and any difference in the replies is theirs."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    replies = []
    with torch.inference_mode():
        for messages in chats:
            ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = ids.to(device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False))
    return replies
