"""The dry run's stand-ins for bitsandbytes: the 4-bit layer (QLoRA) and the 8-bit optimizers.

bitsandbytes needs CUDA kernels, and fake tensors carry no data, so the dry run reproduces its
memory layout instead: `Linear4bit` holds an NF4-packed uint8 weight plus its absmax blocks and
materialises the dequantised weight in each matmul (forward and backward, as `MatMul4Bit`
does), PEFT wraps it with a LoRA layer that clones the base result as PEFT's bnb layer does,
and the optimizer stand-in allocates the 8-bit (or paged 32-bit) Adam states. torch and peft
are imported inside the functions only; the classes are built once, on first use.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from engine.plan.estimator import BNB_4BIT_BLOCKSIZE, BNB_NESTED_BLOCKSIZE, BNB_OPTIM_BLOCKSIZE

# bitsandbytes constants the stand-ins reproduce (the block sizes are shared with tier 1).
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit optimizer states
BNB_PAGED_MIN_NUMEL = 100_000  # smaller paged states are ordinary device tensors


# -- QLoRA: a stand-in for bitsandbytes' Linear4bit ------------------------------------------------


def swap_linears(model: Any, make: Any) -> int:
    """Replace every plain nn.Linear but the output head by `make(linear)`, as transformers'
    bitsandbytes integration does; how many were swapped."""
    import torch

    output = model.get_output_embeddings()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child is not output:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


def quantize_4bit(model: Any, compute_dtype: Any, double_quant: bool, notes: list[str]) -> None:
    """Swap every nn.Linear but the output head for the 4-bit stand-in (as transformers does)."""
    linear4bit = _qlora_parts().Linear4bit
    swapped = swap_linears(
        model, lambda child: linear4bit.from_linear(child, compute_dtype, double_quant)
    )
    big_float_3d = [
        name
        for name, p in model.named_parameters()
        if p.dim() >= 3 and p.is_floating_point() and p.numel() >= BNB_MIN_8BIT_SIZE
    ]
    notes.append(
        f"4-bit layers simulated: {swapped} linear layers as NF4 "
        f"({'double-quantised' if double_quant else 'fp32'} absmax per {BNB_4BIT_BLOCKSIZE}), "
        "dequantised weight materialised in each matmul"
    )
    if big_float_3d:
        notes.append(
            f"{len(big_float_3d)} fused expert tensors are not nn.Linear: kept in "
            f"{str(compute_dtype).removeprefix('torch.')} (not 4-bit)"
        )


@functools.cache
def _qlora_parts() -> Any:
    """The 4-bit stand-in classes, built once (they subclass torch and peft classes)."""
    import types

    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    class _MatMul4bit(torch.autograd.Function):
        """bitsandbytes MatMul4Bit's memory behaviour: no input saved, weight dequantised twice."""

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, layer: Any) -> Any:
            dequantised = layer.dequantize()
            out = torch.nn.functional.linear(x, dequantised, bias)
            del dequantised
            ctx.layer = layer  # the packed weight persists anyway: nothing saved
            return out

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_input = None
            if ctx.needs_input_grad[0]:
                dequantised = ctx.layer.dequantize().to(grad_output.dtype)
                grad_input = torch.matmul(grad_output, dequantised)
            return grad_input, None, None, None

    class Linear4bit(torch.nn.Linear):
        """Memory layout of bitsandbytes' Linear4bit (NF4): packed uint8 weight plus absmax.

        Values are never computed: on fake tensors only sizes matter. `W_q`/`dequantize` are
        the hooks PEFT uses for quantised weights (DoRA reads the dequantised weight).
        """

        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: Any,
            compute_dtype: Any,
            double_quant: bool,
            device: Any,
        ) -> None:
            torch.nn.Module.__init__(self)
            self.in_features = in_features
            self.out_features = out_features
            self.compute_dtype = compute_dtype
            self.double_quant = double_quant
            n = in_features * out_features
            packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=device)
            self.weight = torch.nn.Parameter(packed, requires_grad=False)
            self.weight.logical_numel = n  # type: ignore[attr-defined]
            if bias is not None:
                bias.requires_grad_(False)
            self.bias = bias
            blocks = math.ceil(n / BNB_4BIT_BLOCKSIZE)
            f32, u8 = torch.float32, torch.uint8

            def buffer(name: str, shape: Any, dtype: Any) -> None:
                empty = torch.empty(shape, dtype=dtype, device=device)
                self.register_buffer(name, empty, persistent=False)

            buffer("code", 16, f32)  # the NF4 code book
            if double_quant:  # (the 8-bit code book of the nested absmax is shared: not here)
                buffer("absmax", blocks, u8)
                buffer("absmax2", math.ceil(blocks / BNB_NESTED_BLOCKSIZE), f32)
                buffer("offset", (), f32)
            else:
                buffer("absmax", blocks, f32)

        @classmethod
        def from_linear(cls, linear: Any, compute_dtype: Any, double_quant: bool) -> Any:
            return cls(
                linear.in_features,
                linear.out_features,
                linear.bias,
                compute_dtype,
                double_quant,
                linear.weight.device,
            )

        @property
        def W_q(self) -> Any:  # the attribute name PEFT looks for quantised weights
            return self.weight

        def dequantize(self) -> Any:
            """bnb's dequantize_4bit: fp32 absmax (nested: decoded + offset), then the weight."""
            absmax: Any = self.absmax
            if self.double_quant:
                offset: Any = self.offset
                absmax = absmax.to(torch.float32) + offset
            weight = torch.empty(
                (self.out_features, self.in_features),
                dtype=self.compute_dtype,
                device=self.weight.device,
            )
            del absmax
            return weight

        def forward(self, x: Any) -> Any:
            input_dtype = x.dtype
            x = x.to(self.compute_dtype)
            bias: Any = self.bias
            if bias is not None:
                bias = bias.to(self.compute_dtype)
            matmul: Any = _MatMul4bit.apply
            return matmul(x, self.weight, bias, self).to(input_dtype)

    class LoraLinear4bit(LoraLinear):
        """PEFT's lora.bnb.Linear4bit forward: the base result is cloned before adding LoRA."""

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_forward_args(x, *args, **kwargs)  # type: ignore[no-untyped-call]
            kwargs.pop("adapter_names", None)
            kwargs.pop("alora_offsets", None)
            if self.disable_adapters or self.merged:
                return self.base_layer(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            result = result.clone()  # "defensively clone" (PEFT's bnb layer)
            for active in self.active_adapters:
                if active not in self.lora_A:
                    continue
                lora_a: Any = self.lora_A[active]
                lora_b = self.lora_B[active]
                dropout = self.lora_dropout[active]
                scaling = self.scaling[active]
                requires_conversion = not torch.is_autocast_enabled()
                expected_dtype = result.dtype
                if requires_conversion:
                    x = self._cast_input_dtype(x, lora_a.weight.dtype)
                if active not in self.lora_variant:
                    output = lora_b(lora_a(dropout(x))) * scaling
                    if requires_conversion:
                        output = output.to(expected_dtype)
                    result = result + output
                else:
                    result = self.lora_variant[active].forward(
                        self, active_adapter=active, x=x, result=result, **kwargs
                    )
                    if requires_conversion:
                        result = result.to(expected_dtype)
            return result

    return types.SimpleNamespace(Linear4bit=Linear4bit, LoraLinear4bit=LoraLinear4bit)


def register_lora_4bit(lora_config: Any) -> None:
    """Have PEFT wrap the 4-bit stand-in in the LoRA layer that mirrors its bnb layer."""
    parts = _qlora_parts()
    lora_config._register_custom_module({parts.Linear4bit: parts.LoraLinear4bit})


# -- optimizers: a stand-in for bitsandbytes' 8-bit and paged AdamW ------------------------------


def bnb_optimizer(
    groups: list[dict[str, Any]], model: Any, optim: str, lr: float, notes: list[str]
) -> Any:
    """The stand-in for `optim` (adamw_8bit, paged_adamw_8bit or paged_adamw_32bit)."""
    import torch

    bits = 8 if optim.endswith("8bit") else 32
    paged = optim.startswith("paged_")
    # HF Trainer keeps nn.Embedding weights on 32-bit states with 8-bit optimizers.
    embedding_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    layout = (
        f"uint8 states + fp32 absmax per {BNB_OPTIM_BLOCKSIZE} values; "
        "fp32 for embeddings and small tensors"
        if bits == 8
        else "two fp32 states per parameter"
    )
    notes.append(f"bitsandbytes {optim} simulated by its state layout ({layout})")
    return _bnb_optimizer_class()(groups, lr=lr, bits=bits, paged=paged, fp32_ids=embedding_ids)


@functools.cache
def _bnb_optimizer_class() -> Any:
    import torch

    class Bnb2StateStandIn(torch.optim.Optimizer):
        """bitsandbytes Adam-style optimizer's state memory; the update is in place (no temps)."""

        def __init__(
            self,
            params: Any,
            *,
            lr: float,
            bits: int,
            paged: bool,
            fp32_ids: set[int],
        ) -> None:
            super().__init__(params, {"lr": lr})
            self.bits = bits
            self.paged = paged
            self.fp32_ids = fp32_ids
            self.paged_bytes = 0

        def _init_state(self, p: Any) -> dict[str, Any]:
            n = p.numel()
            eight_bit = self.bits == 8 and n >= BNB_MIN_8BIT_SIZE and id(p) not in self.fp32_ids
            dtype = torch.uint8 if eight_bit else torch.float32
            state: dict[str, Any] = {"step": 0}
            state["state1"] = torch.zeros_like(p, dtype=dtype)
            state["state2"] = torch.zeros_like(p, dtype=dtype)
            if self.paged and n >= BNB_PAGED_MIN_NUMEL:
                self.paged_bytes += 2 * n * (1 if eight_bit else 4)
            if eight_bit:
                blocks = math.ceil(n / BNB_OPTIM_BLOCKSIZE)
                state["absmax1"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
                state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
            return state

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p not in self.state or not self.state[p]:
                        self.state[p] = self._init_state(p)
                    self.state[p]["step"] += 1
                    p.add_(p.grad, alpha=-group["lr"])  # stands for the fused in-place kernel
            return None

    return Bnb2StateStandIn
