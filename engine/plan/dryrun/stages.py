"""The dry run's preference stages: one training step of TRL's DPO, KTO, ORPO and SimPO trainers.

The driver (engine/plan/dryrun/entry.py) calls `preference_steps` instead of HF Trainer's plain
step when the config's stage is a preference stage. Each step makes the calls TRL 1.16 makes,
in its order, on the dry run's fake tensors:

- **DPO** (`DPOTrainer._compute_loss`): chosen and rejected in one batch of 2 x batch sequences
  through the policy with TRL's fused LM head (`add_fused_lm_head`: per-token log-probs from the
  hidden states in tiles of 4096 tokens x 32768 vocabulary entries; the full logits never
  exist, the backward recomputes each tile and accumulates the gradients in fp32). Then, while
  the policy's saved activations are alive, the reference forward: no grad, gradient
  checkpointing switched off (`disable_gradient_checkpointing`), and with adapters PEFT's
  `disable_adapter()` on the same weights (`use_adapter(model, None)`), or a frozen copy of the
  weights built like TRL builds it (the policy's dtype and attention), or nothing when the
  reference log-probs were precomputed. Then the sigmoid loss, backward, HF Trainer's clip,
  optimizer step and `zero_grad`.
- **KTO** (`KTOTrainer._compute_loss`): a batch of `batch` unpaired sequences. First the KL
  completions (the same batch with mismatched completions) through the policy with no grad,
  then the policy's forward, then the reference's KL and main forwards, all with the fused head.
- **ORPO** and **SimPO** (`ORPOTrainer` / `CPOTrainer.concatenated_forward`): no reference and no
  fused head: the model's full logits for the 2 x batch sequences, upcast to fp32 as
  accelerate's mixed-precision wrapper returns them, the chosen half's cross-entropy (ORPO,
  and SimPO with `cpo_alpha` > 0; ftui's pure SimPO skips it) and `selective_log_softmax`.

What stays approximate (in the result's notes): every position is scored (real batches score
the completion only, after the prompt), no padding mask is built, and TRL's Triton kernels on
the GPU fold each logits tile in place and CUDA accumulates its products into fp32 in place,
which is simulated by doing nothing there (TRL's CPU code path would allocate fp32 copies of each
tile and weight chunk that a GPU never makes).
torch, peft and trl are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

from engine.models import ModelArch
from engine.plan.dryrun.model import DryRunError, build_model, retie, shared_parameters
from engine.plan.dryrun.tracker import MemoryLedger
from engine.training_config import PREFERENCE_STAGES, TrainingConfig

# TRL's defaults that touch nothing but the loss's value.
_BETA = 0.1
_MAX_GRAD_NORM = 1.0
_FUSED_STAGES = ("dpo", "kto")  # the stages whose trainer adds TRL's fused LM head


def is_preference(config: TrainingConfig) -> bool:
    return config.stage in PREFERENCE_STAGES


def stage_phases(config: TrainingConfig) -> tuple[str, ...]:
    """The phases a step of `config`'s stage records (the reference forward is its own)."""
    if is_preference(config) and config.reference_kind in ("adapter", "copy"):
        return ("forward", "reference_forward", "backward", "optimizer")
    return ("forward", "backward", "optimizer")


def build_reference(arch: ModelArch, config: TrainingConfig, notes: list[str]) -> Any:
    """The frozen reference copy TRL builds for `reference_kind == "copy"` (None otherwise).

    TRL creates it from the policy's checkpoint with the policy's dtype (fp32 when a mixed-precision
    full fine-tune keeps fp32 master weights) and attention, in eval mode, without gradient
    checkpointing or adapters; its parameters keep `requires_grad` (only no_grad protects them).
    Still on `meta`: `materialise_reference` gives it storage inside the tracker."""
    if not is_preference(config) or config.reference_kind != "copy":
        return None
    like_policy = config.with_changes(
        stage="sft",
        method="full",
        grad_ckpt=False,
        pure_bf16=config.pure_bf16 or config.method != "full",
    )
    reference = build_model(arch, like_policy, []).model
    reference.eval()
    notes.append("reference: a frozen copy of the weights in the policy's dtype (TRL's ref_model)")
    return reference


def materialise_reference(reference: Any) -> None:
    """Give the reference copy fake storage (counted by the tracker) and tie its weights again."""
    if reference is None:
        return
    ties = shared_parameters(reference)
    reference.to_empty(device="cpu")
    retie(ties)


def preference_steps(
    model: Any,
    reference: Any,
    optimizer: Any,
    params: list[Any],
    config: TrainingConfig,
    steps: int,
    autocast_dtype: Any,
    ledger: MemoryLedger,
    notes: list[str],
) -> None:
    """`steps` training steps of the config's preference stage, as TRL runs them."""
    import torch

    stage = config.stage
    if stage in _FUSED_STAGES:
        _add_fused_head(model, reference)
        notes.append(
            f"{stage}: TRL's fused LM head (log-probs in tiles, no full logits); every position "
            "scored, as if the prompt were part of the completion"
        )
    else:
        notes.append(f"{stage}: the full logits, upcast to fp32 by the mixed-precision wrapper")
    for _ in range(steps):
        ledger.set_phase("forward")
        with _gpu_folds():
            if stage == "dpo":
                loss = _dpo_loss(model, reference, config, autocast_dtype, ledger)
            elif stage == "kto":
                loss = _kto_loss(model, reference, config, autocast_dtype, ledger)
            else:
                loss = _paired_logits_loss(model, config, autocast_dtype)
            ledger.set_phase("backward")
            loss.backward()
        del loss
        ledger.set_phase("optimizer")
        torch.nn.utils.clip_grad_norm_(params, _MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# -- the steps -----------------------------------------------------------------------------------


def _autocast(dtype: Any) -> Any:
    import torch

    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _tokens(rows: int, config: TrainingConfig) -> Any:
    import torch

    return torch.zeros((rows, config.seq_len), dtype=torch.long)


def _fused_log_probs(model: Any, input_ids: Any, autocast_dtype: Any) -> Any:
    """Per-sequence log-prob sums through TRL's fused head (labels: every position)."""
    with _autocast(autocast_dtype):
        out = model(input_ids=input_ids, labels=input_ids, fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(dim=1), out


@contextlib.contextmanager
def _reference_context(model: Any, reference: Any, config: TrainingConfig) -> Iterator[Any]:
    """What TRL's reference forward runs in; yields the module to call."""
    import torch
    from trl.models.utils import disable_gradient_checkpointing

    with warnings.catch_warnings():
        # TRL calls transformers' gradient-checkpointing API by its deprecated names
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad(), disable_gradient_checkpointing(model, {"use_reentrant": False}):
            yield from _reference_module(model, reference, config)


def _reference_module(model: Any, reference: Any, config: TrainingConfig) -> Iterator[Any]:
    from trl.trainer.utils import use_adapter

    if reference is not None:
        yield reference
    elif config.reference_kind == "adapter":
        with use_adapter(model, adapter_name=None):  # PEFT's disable_adapter()
            yield model
    else:
        raise DryRunError(f"no reference model for reference kind {config.reference_kind}")


def _dpo_loss(
    model: Any, reference: Any, config: TrainingConfig, autocast_dtype: Any, ledger: MemoryLedger
) -> Any:
    import torch
    import torch.nn.functional as F

    input_ids = _tokens(config.batch * config.sequences_per_sample, config)
    logps, outputs = _fused_log_probs(model, input_ids, autocast_dtype)
    chosen, rejected = logps.chunk(2, dim=0)
    if config.reference_kind == "precompute":  # read from the batch
        ref_chosen = torch.zeros_like(chosen)
        ref_rejected = torch.zeros_like(rejected)
    else:
        ledger.set_phase("reference_forward")
        with _reference_context(model, reference, config) as ref:
            ref_logps, _ = _fused_log_probs(ref, input_ids, autocast_dtype)
        ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -F.logsigmoid(_BETA * delta).mean()
    del outputs  # TRL's metrics read it; it dies when _compute_loss returns
    return loss


def _kto_loss(
    model: Any, reference: Any, config: TrainingConfig, autocast_dtype: Any, ledger: MemoryLedger
) -> Any:
    import torch

    input_ids = _tokens(config.batch, config)
    kl_ids = _tokens(config.batch, config)  # the same prompts with mismatched completions
    with torch.no_grad():
        kl_logps, _ = _fused_log_probs(model, kl_ids, autocast_dtype)
    logps, outputs = _fused_log_probs(model, input_ids, autocast_dtype)
    if config.reference_kind == "precompute":
        ref_logps = torch.zeros_like(logps)
        ref_kl = torch.zeros_like(kl_logps)
    else:
        ledger.set_phase("reference_forward")
        with _reference_context(model, reference, config) as ref:
            ref_kl, _ = _fused_log_probs(ref, kl_ids, autocast_dtype)
            ref_logps, _ = _fused_log_probs(ref, input_ids, autocast_dtype)
    kl = (kl_logps - ref_kl).mean().detach().clamp(min=0)
    half = max(config.batch // 2, 1)  # half desirable, half undesirable
    ratios = logps - ref_logps
    chosen = 1 - torch.sigmoid(_BETA * (ratios[:half] - kl))
    rejected = 1 - torch.sigmoid(_BETA * (kl - ratios[half:]))
    loss = torch.cat((chosen, rejected), 0).nanmean()
    del outputs
    return loss


def _paired_logits_loss(model: Any, config: TrainingConfig, autocast_dtype: Any) -> Any:
    """ORPO's / CPO's concatenated_forward with its loss (odds ratio, or SimPO's margin)."""
    import torch
    import torch.nn.functional as F

    pairs = config.batch
    input_ids = _tokens(2 * pairs, config)
    with _autocast(autocast_dtype):
        logits = model(input_ids=input_ids, use_cache=False).logits
    if config.dtype != "fp32":  # accelerate's convert_outputs_to_fp32 under mixed precision
        logits = logits.float()
    labels = input_ids.clone()
    nll = torch.zeros(())  # SimPO as ftui runs it by default: cpo_alpha 0, no NLL term
    if config.stage == "orpo":
        chosen_logits = logits[:pairs, :-1, :].contiguous()
        nll = F.cross_entropy(
            chosen_logits.view(-1, chosen_logits.shape[-1]), labels[:pairs, 1:].reshape(-1)
        )
        del chosen_logits
    shifted = labels[:, 1:].clone()
    mask = shifted != -100
    per_token = _selective_log_softmax(logits[:, :-1, :], torch.where(mask, shifted, 0))
    logps = (per_token * mask).sum(-1) / mask.sum(-1)  # average_log_prob: ORPO and SimPO
    chosen, rejected = logps.chunk(2, dim=0)
    if config.stage == "orpo":
        log_odds = (chosen - rejected) - (
            torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))
        )
        loss = nll - _BETA * F.logsigmoid(log_odds).mean()
    else:
        loss = nll - F.logsigmoid(2.0 * (chosen - rejected) - 0.5).mean()
    # The trainers' metrics: the mean logits of each half (detached)
    logits[:pairs].detach().mean()
    logits[pairs:].detach().mean()
    return loss


def _selective_log_softmax(logits: Any, index: Any) -> Any:
    """TRL's `selective_log_softmax` as it runs on a GPU: its Triton kernel
    (trl/kernels/logprob_entropy.py) keeps the logits it reads and three fp32 numbers per
    position, and its backward writes one contiguous gradient of the logits' shape. (TRL's CPU
    fallback loops over rows, and each row's backward would make a whole-batch gradient.)"""
    return _log_prob_function().apply(logits, index)


@functools.cache
def _log_prob_function() -> Any:
    import torch

    class LogProbs(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, index: Any) -> Any:
            log_probs = torch.empty(logits.shape[:-1], dtype=torch.float32)
            entropy = torch.empty_like(log_probs)
            log_z, expected = torch.empty_like(log_probs), torch.empty_like(log_probs)
            ctx.save_for_backward(logits, index, log_z, expected)
            del entropy  # returned by the kernel, dropped by selective_log_softmax
            return log_probs

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            logits = ctx.saved_tensors[0]
            return torch.empty_like(logits, memory_format=torch.contiguous_format), None

    return LogProbs


# -- TRL's fused LM head on fake tensors ---------------------------------------------------------


def _add_fused_head(model: Any, reference: Any) -> None:
    """TRL's `add_fused_lm_head`, on the base model under PEFT (as the trainers add it)."""
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    if reference is not None:
        add_fused_lm_head(reference)


def _in_place(*args: Any, **kwargs: Any) -> None:
    """The GPU's Triton fold kernels update each tile's statistics in place, and CUDA's
    `addmm(out_dtype=float32, out=acc)` accumulates the bf16 tile products into fp32 in place:
    no allocation (the CPU path makes fp32 copies of the tile and of the weight chunk)."""


@contextlib.contextmanager
def _gpu_folds() -> Iterator[None]:
    """TRL's chunked log-prob function with the GPU's in-place folds and fp32 accumulation for
    the CPU's fp32 copies: the tiles, saved tensors and fp32 gradient buffers stay TRL's own."""
    from trl.kernels import chunked_logprob

    names = ("_forward_tile", "_backward_tile", "_addmm_fp32")
    saved = {name: getattr(chunked_logprob, name) for name in names}
    for name in names:
        setattr(chunked_logprob, name, _in_place)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(chunked_logprob, name, function)
