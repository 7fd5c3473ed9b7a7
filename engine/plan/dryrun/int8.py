"""The dry run's stand-in for bitsandbytes' LLM.int8 base (`--base-bits 8`): Linear8bitLt.

What bitsandbytes 0.50 keeps and makes, reproduced as tensors of the same sizes (fake tensors
carry no data, and bitsandbytes' kernels need CUDA):
  weights     Int8Params: the int8 weight (1 byte a parameter) and SCB, an fp32 absmax per
              output row; the bias stays in the compute dtype.
  forward     MatMul8bitLt (the weight frozen: bitsandbytes' fast path): the input cast to fp16
              and quantised row-wise (int8 CA + fp32 SCA, the outlier columns found at
              |x| > 6), an int32 product dequantised to the output, and the outlier columns
              (subA) multiplied in 16 bits with their dequantised weight columns. Saved for
              backward: the input (A) and subA.
  backward    the weight dequantised to the input's dtype (CB * SCB / 127), a whole out x in
              matrix, for the input's gradient.
How many input columns carry outliers depends on the data: the stand-in takes
INT8_OUTLIER_FRACTION of them (tier 1 does the same). torch is imported inside the functions.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from engine.plan.method_memory import INT8_OUTLIER_FRACTION


def quantize_8bit(model: Any, notes: list[str]) -> None:
    """Swap every nn.Linear but the output head for the int8 stand-in (as transformers does)."""
    from engine.plan.dryrun.bnb import swap_linears

    swapped = swap_linears(model, _int8_parts().Linear8bitLt.from_linear)
    notes.append(
        f"8-bit layers simulated: {swapped} linear layers as LLM.int8 (int8 weights, fp32 row "
        f"scales; {INT8_OUTLIER_FRACTION:.0%} of input columns taken as outliers)"
    )


def outlier_columns(in_features: int) -> int:
    return math.ceil(in_features * INT8_OUTLIER_FRACTION)


@functools.cache
def _int8_parts() -> Any:
    """The 8-bit stand-in classes, built once (they subclass torch classes)."""
    import types

    import torch

    class _MatMul8bitLt(torch.autograd.Function):
        """bitsandbytes MatMul8bitLt's memory, the weight frozen (see the module's docstring)."""

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, layer: Any) -> Any:
            shape = x.shape
            a = x.reshape(-1, shape[-1])
            tokens, cols = a.shape[0], outlier_columns(layer.in_features)
            a16 = a.to(torch.float16)  # int8_vectorwise_quant(A.to(float16), threshold)
            ca = torch.empty_like(a16, dtype=torch.int8)
            sca = torch.empty((tokens,), dtype=torch.float32, device=a.device)
            outliers = torch.empty((cols,), dtype=torch.int32, device=a.device)
            del a16
            # int8_mixed_scaled_mm: the outlier inputs in their own dtype and weight columns
            sub_a = torch.empty((tokens, cols), dtype=a.dtype, device=a.device)
            sub_b = torch.empty((layer.out_features, cols), dtype=torch.float32, device=a.device)
            sub_b = sub_b.to(a.dtype)
            product = torch.empty((tokens, layer.out_features), dtype=torch.int32, device=a.device)
            out = torch.empty((tokens, layer.out_features), dtype=a.dtype, device=a.device)
            del product, ca, sca, outliers  # int8_mm_dequant adds the bias into `out`
            out.addmm_(sub_a, sub_b.t())
            del sub_b
            ctx.layer = layer
            ctx.dtype = a.dtype
            ctx.shape = shape
            if ctx.needs_input_grad[0]:
                ctx.tensors = (a, sub_a)  # kept as attributes, as bitsandbytes does
            return out.reshape(*shape[:-1], layer.out_features)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_input = None
            if ctx.needs_input_grad[0]:
                layer = ctx.layer
                grad = grad_output.reshape(-1, grad_output.shape[-1])
                dequantised = torch.empty(
                    (layer.out_features, layer.in_features), dtype=ctx.dtype, device=grad.device
                )  # CB.to(dtype, copy=True).mul_(SCB / 127)
                grad_input = torch.matmul(grad.to(ctx.dtype), dequantised).view(ctx.shape)
                del dequantised
            ctx.tensors = None
            return grad_input, None, None, None

    class Linear8bitLt(torch.nn.Linear):
        """Memory layout of bitsandbytes' Linear8bitLt: int8 weight plus its row scales (SCB)."""

        def __init__(self, in_features: int, out_features: int, bias: Any, device: Any) -> None:
            torch.nn.Module.__init__(self)
            self.in_features = in_features
            self.out_features = out_features
            weight = torch.empty((out_features, in_features), dtype=torch.int8, device=device)
            self.weight = torch.nn.Parameter(weight, requires_grad=False)
            if bias is not None:
                bias.requires_grad_(False)
            self.bias = bias
            scb = torch.empty((out_features,), dtype=torch.float32, device=device)
            self.register_buffer("SCB", scb, persistent=False)

        @classmethod
        def from_linear(cls, linear: Any) -> Any:
            return cls(linear.in_features, linear.out_features, linear.bias, linear.weight.device)

        def forward(self, x: Any) -> Any:
            matmul: Any = _MatMul8bitLt.apply
            return matmul(x, self.weight, self.bias, self)

    return types.SimpleNamespace(Linear8bitLt=Linear8bitLt)


def register_lora_8bit(lora_config: Any) -> None:
    """PEFT wraps the int8 stand-in in its plain LoRA layer: lora.bnb.Linear8bitLt's forward
    is the same (base result, then the fp32 adapter's output added, no clone)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    lora_config._register_custom_module({_int8_parts().Linear8bitLt: LoraLinear})
