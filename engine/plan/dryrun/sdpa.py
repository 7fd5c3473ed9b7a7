"""The dry run's SDPA with a mask: what CUDA's memory-efficient kernel allocates and saves.

Given an explicit mask, torch's `scaled_dot_product_attention` on CUDA cannot use the flash
kernel (it takes no mask) and picks the memory-efficient kernel, which takes an additive bias
and saves for backward only its inputs, the output and a log-sum-exp per query and head
(plus the dropout RNG's seed and offset). On the CPU the dry run runs on, the same call takes
the math path, which keeps the fp32 softmax probabilities, their dropout mask and a
compute-dtype copy: batch x heads x seq x seq per layer, which a GPU never allocates.

`register_masked_sdpa` replaces transformers' "sdpa" attention function, for fake tensors
only, by one that follows CUDA: a boolean mask is turned into an additive bias of the query's
dtype (a new tensor, as torch's convert_boolean_attn_mask does, saved with the other inputs),
padded to a multiple of 16 keys when needed (preprocess_mask), broadcast over the heads as a
view, and `aten._scaled_dot_product_efficient_attention` runs on it; its meta kernels give the
output, log-sum-exp and gradients CUDA would. Without a mask but with attention dropout, which
CPU's flash kernel does not implement (the math path again) and CUDA's flash kernel does,
`aten._scaled_dot_product_flash_attention` runs (output, log-sum-exp and the RNG state saved).
Without a mask but with values narrower than the query and key heads (MLA: DeepSeek-V2/V3,
MiniCPM3, ...), CUDA's flash kernel cannot run (one head size for q, k and v) and the
memory-efficient kernel can (is_causal); the CPU takes the math path, which keeps the fp32
probabilities: the dry run runs the memory-efficient kernel.
Calls without a mask or dropout (CPU's flash kernel saves what CUDA's does), with a position
bias, or on real tensors go to transformers' own function unchanged.

`unpacked_sequences` stops transformers from materialising a mask the GPU run never builds.
torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import functools
from typing import Any

_ALIGNMENT = 16  # the memory-efficient kernel's bias alignment (keys), torch's preprocess_mask


@functools.cache
def register_masked_sdpa() -> None:
    """Make transformers' "sdpa" follow CUDA's memory-efficient kernel under fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensor
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    def masked_sdpa(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if (
            kwargs.get("position_bias") is not None
            and isinstance(query, FakeTensor)
            and kwargs.get("softcap") is None
            and query.shape[2] > 1
        ):
            biased = position_bias_attention(
                module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs
            )
            if biased is not None:
                return biased
        uneven = query.shape[-1] != value.shape[-1]  # MLA: values narrower than q/k heads
        groups = getattr(module, "num_key_value_groups", 1)
        if (
            attention_mask is None
            and uneven
            and groups == 1
            and isinstance(query, FakeTensor)
            and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None
            and query.shape[2] > 1
        ):
            # CUDA's flash kernel needs one head size for q, k and v; the memory-efficient
            # kernel takes narrower values (and is_causal); the CPU runs the math path
            import torch

            causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            output = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, None, True, dropout, bool(causal), scale=scaling
            )[0]
            return output.transpose(1, 2).contiguous(), None
        if (
            (attention_mask is None and not dropout)  # CPU's flash kernel saves what CUDA's does
            or not isinstance(query, FakeTensor)
            or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None
            or query.shape[2] == 1
        ):
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
            )
        if attention_mask is None:  # dropout, which CPU's flash kernel lacks and CUDA's has
            import torch

            causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            output = torch.ops.aten._scaled_dot_product_flash_attention(
                query, key, value, dropout, bool(causal), False, scale=scaling
            )[0]
            return output.transpose(1, 2).contiguous(), None
        if groups > 1:  # transformers repeats k/v when a mask is given (no GQA kernel with one)
            key = repeat_kv(key, groups)
            value = repeat_kv(value, groups)
        output = efficient_attention(query, key, value, attention_mask, dropout, scaling)
        return output.transpose(1, 2).contiguous(), None

    AttentionInterface.register("sdpa", masked_sdpa)


def position_bias_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float,
    scaling: float | None,
    is_causal: bool | None,
    kwargs: dict[str, Any],
) -> Any:
    """SDPA with a learned position bias (Inkling's relative logits), as CUDA runs it, or None
    where CUDA runs the math path too (the caller then runs transformers' own function).

    transformers folds the bias and the mask into one float mask that needs a gradient
    (create_position_bias_mask). Without a mask it asks for the GQA kernels (enable_gqa):
    flash takes no mask and the memory-efficient kernel no GQA, so CUDA runs the math path,
    as the CPU does. With a mask (or one key/value head per query head) k/v are repeated and
    CUDA's memory-efficient kernel takes the float mask and returns its gradient; the CPU
    runs the math path, which keeps the fp32 probabilities a GPU never allocates.
    """
    from transformers.integrations.sdpa_attention import (
        create_position_bias_mask,
        repeat_kv,
        use_gqa_in_sdpa,
    )

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        if use_gqa_in_sdpa(attention_mask, key, value):
            return None
        key = repeat_kv(key, groups)
        value = repeat_kv(value, groups)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(causal) and attention_mask is None
    mask = create_position_bias_mask(kwargs["position_bias"], attention_mask, causal, query, key)
    output = efficient_attention(query, key, value, mask, dropout, scaling)
    return output.transpose(1, 2).contiguous(), None


@functools.cache
def unpacked_sequences() -> None:
    """Let transformers see, under fake tensors, that the dry run's sequences are not packed.

    Without a 2-D attention mask, transformers reads the position ids to detect packed
    sequences; a fake tensor has no values to read, so it assumes packing and materialises a
    boolean batch x seq x seq mask for every model, which also denies SDPA its `is_causal`
    path. On a GPU the position ids are a real arange: no packing, no mask (sdpa_mask returns
    None) unless a sliding window shorter than the sequence or a non-causal pattern needs one.
    The dry run's position ids are that arange, so a fake one is read as unpacked.
    """
    from torch._subclasses.fake_tensor import FakeTensor
    from transformers import masking_utils

    find_packed = masking_utils.find_packed_sequence_indices

    def find_packed_or_fake(position_ids: Any) -> Any:
        if isinstance(position_ids, FakeTensor):
            return None
        return find_packed(position_ids)

    masking_utils.find_packed_sequence_indices = find_packed_or_fake


def efficient_attention(
    query: Any, key: Any, value: Any, mask: Any, dropout: float, scale: float | None
) -> Any:
    """CUDA's F.scaled_dot_product_attention with a mask, as the memory-efficient kernel runs it."""
    import torch

    if mask.dtype == torch.bool:  # convert_boolean_attn_mask: a new bias in the query's dtype
        bias = torch.zeros_like(mask, dtype=query.dtype)
        mask = bias.masked_fill_(mask.logical_not(), float("-inf"))
    keys = mask.shape[-1]
    if keys % _ALIGNMENT:  # preprocess_mask pads the bias to aligned rows, then slices it
        padded = -(-keys // _ALIGNMENT) * _ALIGNMENT
        mask = torch.nn.functional.pad(mask, (0, padded - keys))[..., :keys]
    batch, heads, q_len, _ = query.shape
    bias = mask.expand(batch, heads, q_len, keys)  # a broadcast view, no copy
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, True, dropout, False, scale=scale
    )
    return out[0]
