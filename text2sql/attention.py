"""How the static engine's one-token decode step attends: on the key/value heads directly.

A model with grouped key/value heads (Qwen2.5-1.5B: 12 query heads share 2) would, compiled, attend through
transformers' sdpa, which repeats the key/value heads of the whole static cache for every step. `packed_sdpa` reads
each once instead. `text2sql.engine` decides when it is used (`PACKED_GQA`).
"""

from __future__ import annotations

PACKED_ATTENTION = "text2sql_sdpa"
"""The attention the engine gives a model that uses sdpa: sdpa, but a one-token query attends on the key/value
heads directly (`packed_sdpa`)."""


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs):
    """transformers' sdpa attention, except for a one-token query with grouped key/value heads: its heads are
    packed as (kv heads, group) rows and attend through two matmuls, so every key/value head is read once.
    transformers packs them so only outside torch.compile; compiled, it repeats the key/value heads first, a copy
    of the whole static cache per layer and step (at 64 slots of 4k columns, ~45 GB a step for Qwen2.5-1.5B). The
    matmuls rather than sdpa: no attention kernel to pick per shape. Scores in the model's dtype, softmax in float32:
    the precision of transformers' eager attention."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    mask_shared = attention_mask is None or attention_mask.shape[1] == 1
    if query.shape[2] != 1 or groups == 1 or not mask_shared or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    scores = torch.matmul(packed, key.transpose(-1, -2)) * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def use_packed_attention(model, packed: bool) -> None:
    """Make a model that attends with sdpa attend with `packed_sdpa` (registered once, by name), or back."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config.get_text_config(decoder=True)
    now = getattr(config, "_attn_implementation", None)
    if packed and now == "sdpa":
        AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
        AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
        config._attn_implementation = PACKED_ATTENTION
    elif not packed and now == PACKED_ATTENTION:
        config._attn_implementation = "sdpa"
