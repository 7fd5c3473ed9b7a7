"""The dry run (tier 2 of the memory estimator): the tracker, and training steps on fake tensors.

Tiny Llama-style configs (hidden 64, vocab 512) keep each dry run under a second on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from typing import Any

import pytest

from engine.models import ModelArch
from engine.plan.dryrun.entry import GIB, PHASES, DryRunError, DryRunResult, MemoryLedger, dry_run
from engine.training_config import TrainingConfig

# The ML stack is imported by the tests themselves (seconds), not at collection time.
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "peft")),
    reason="the dry run needs torch, transformers and peft (pip install ftui[train])",
)

HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS = 64, 128, 2, 512, 4, 2
HEAD_DIM = HIDDEN // HEADS
# LoRA-targetable linears of one decoder layer: (in, out)
LAYER_LINEARS = {
    "q_proj": (HIDDEN, HEADS * HEAD_DIM),
    "k_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "v_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "o_proj": (HEADS * HEAD_DIM, HIDDEN),
    "gate_proj": (HIDDEN, INTER),
    "up_proj": (HIDDEN, INTER),
    "down_proj": (INTER, HIDDEN),
}
LINEAR_PARAMS = LAYERS * sum(i * o for i, o in LAYER_LINEARS.values())
NORM_PARAMS = (2 * LAYERS + 1) * HIDDEN
ROTARY_BYTES = 2 * HEAD_DIM // 2 * 4  # rotary embedding: inv_freq and original_inv_freq (fp32)


def tiny(**overrides: Any) -> ModelArch:
    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
    }
    config.update(overrides)
    return ModelArch(name="tiny", source="dir", config=config)


def params_of(arch: ModelArch) -> int:
    embeddings = VOCAB * HIDDEN * (1 if arch.tied_embeddings else 2)
    return embeddings + LINEAR_PARAMS + NORM_PARAMS


def lora_params(rank: int) -> int:
    return LAYERS * sum(rank * (i + o) for i, o in LAYER_LINEARS.values())


@pytest.fixture(scope="module", autouse=True)
def ml_stack() -> None:
    """Import transformers and peft once for the module (seconds), outside any single test."""
    from engine.plan.dryrun.entry import _import_stack

    _import_stack()


@pytest.fixture
def torch() -> Any:
    import torch

    return torch


# -- the tracker ---------------------------------------------------------------------------------


def test_import_does_not_import_torch() -> None:
    code = "import sys, engine.plan.dryrun.entry; sys.exit(1 if 'torch' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, "import engine.plan.dryrun.entry imported torch" + done.stderr


def test_tracker_counts_a_known_pattern_exactly(torch: Any) -> None:
    from engine.plan.dryrun.entry import track_memory

    with track_memory() as ledger:
        a = torch.empty(1000, dtype=torch.float32)
        assert ledger.live == 4000
        view = a.view(10, 100).t()  # views share the storage: not counted again
        a.add_(1)  # in place: nothing new
        assert ledger.live == 4000
        b = a + 1
        assert ledger.live == 8000
        del b
        assert ledger.live == 4000
        assert ledger.peak == 8000
        h = torch.empty((8, 8), dtype=torch.bfloat16)
        assert ledger.live == 4000 + 128
        del h
        assert ledger.live == 4000
        del view
        del a
        assert ledger.live == 0
        assert ledger.peak == 8000


def test_tracker_frees_fake_storages(torch: Any) -> None:
    """weakref.finalize fires for fake storages: a loop that allocates and drops stays flat."""
    from engine.plan.dryrun.entry import track_memory

    with track_memory() as ledger:
        keep = torch.empty(256, dtype=torch.float16)
        for _ in range(200):
            tmp = torch.empty((64, 64), dtype=torch.float32)
            tmp = tmp * 2  # the first tensor dies here
            del tmp
        assert ledger.live == 512
        assert ledger.tracked_storages == 1
        assert ledger.peak == 512 + 2 * 64 * 64 * 4
        del keep


def test_tracker_counts_a_storage_once_across_wrappers(torch: Any) -> None:
    from engine.plan.dryrun.entry import track_memory

    with track_memory() as ledger:
        t = torch.empty(100, dtype=torch.float32)
        first = t.untyped_storage()
        assert first is t.untyped_storage()
        del first  # the tensor keeps the storage (and its Python object) alive
        assert ledger.live == 400
        u = t[10:20] * 1  # a new storage of 40 bytes
        assert ledger.live == 440
        del t, u
        assert ledger.live == 0


def test_tracker_recounts_storage_growth(torch: Any) -> None:
    from engine.plan.dryrun.entry import track_memory

    with track_memory() as ledger:
        t = torch.empty(0, dtype=torch.float32)
        assert ledger.live == 0
        t.resize_(50)
        assert ledger.live == 200
        del t
        assert ledger.live == 0


def test_ledger_phase_peaks() -> None:
    class Storage:
        def __init__(self, n: int) -> None:
            self.n = n

        def nbytes(self) -> int:
            return self.n

    ledger = MemoryLedger()
    ledger.set_phase("forward")
    a = Storage(100)
    ledger.track(a)
    ledger.track(a)  # once
    ledger.set_phase("backward")
    b = Storage(50)
    ledger.track(b)
    del a
    ledger.set_phase("optimizer")
    assert ledger.phase_peaks == {"forward": 100, "backward": 150, "optimizer": 50}
    assert ledger.live == 50
    del b
    assert ledger.live == 0


# -- dry runs ------------------------------------------------------------------------------------


def test_full_finetune_pure_bf16_peaks_at_the_optimizer_step() -> None:
    arch = tiny()
    n = params_of(arch)
    config = TrainingConfig(method="full", pure_bf16=True, seq_len=8, batch=1, grad_ckpt=False)
    result = dry_run(arch, config)
    assert result.total_params == n
    assert result.trainable_params == n
    assert result.peak_phase == "optimizer"
    # weights 2 + grads 2 + Adam's two bf16 states 4 + foreach temporary 2 (per param group:
    # HF's no-decay group of norms is a separate, tiny group)
    assert result.peak_allocated_bytes >= 10 * (n - NORM_PARAMS)
    assert result.peak_allocated_bytes <= 10.2 * n
    # persistent: weights + the two states (grads are set to None)
    assert result.persistent_bytes == 6 * n + ROTARY_BYTES + 4 * n_params_tensors(arch)
    assert result.steps == 2
    assert set(result.phase_peaks) == set(PHASES)


def n_params_tensors(arch: ModelArch) -> int:
    """AdamW keeps one fp32 `step` scalar per parameter tensor."""
    per_layer = len(LAYER_LINEARS) + 2  # linears + two norms
    embeddings = 1 if arch.tied_embeddings else 2
    return LAYERS * per_layer + 1 + embeddings


def test_mixed_precision_full_finetune_keeps_fp32_master_weights() -> None:
    arch = tiny()
    n = params_of(arch)
    config = TrainingConfig(method="full", seq_len=8, grad_ckpt=False)
    result = dry_run(arch, config)
    # fp32 weights 4 + two fp32 Adam states 8
    assert result.persistent_bytes == 12 * n + ROTARY_BYTES + 4 * n_params_tensors(arch)
    assert result.peak_phase == "optimizer"
    assert result.peak_allocated_bytes >= 20 * (n - NORM_PARAMS)
    assert any("autocast" in note for note in result.notes)


def test_tied_embeddings_are_counted_once() -> None:
    config = TrainingConfig(method="lora", seq_len=8, grad_ckpt=False)
    untied = dry_run(tiny(tie_word_embeddings=False), config)
    tied = dry_run(tiny(tie_word_embeddings=True), config)
    assert untied.total_params - tied.total_params == VOCAB * HIDDEN
    # bf16 weights: exactly one vocab x hidden matrix less
    assert untied.persistent_bytes - tied.persistent_bytes == VOCAB * HIDDEN * 2


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT calls a renamed transformers API
def test_lora_trains_the_peft_count_and_peaks_far_below_full(torch: Any) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = tiny()
    lora = dry_run(arch, TrainingConfig(method="lora", rank=8, alpha=16, seq_len=8))
    full = dry_run(arch, TrainingConfig(method="full", pure_bf16=True, seq_len=8))

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch.config))
        peft_model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    peft_trainable, peft_total = peft_model.get_nb_trainable_parameters()
    assert lora.trainable_params == peft_trainable == lora_params(8)
    assert lora.total_params == peft_total == params_of(arch) + lora_params(8)
    assert lora.peak_allocated_bytes < 0.5 * full.peak_allocated_bytes
    # bf16 base weights, fp32 adapters (PEFT upcasts them) with two fp32 Adam states
    base = 2 * params_of(arch)
    adapters = 12 * lora_params(8)
    assert lora.persistent_bytes == pytest.approx(base + adapters, rel=0.01)


def test_lora_on_named_targets() -> None:
    config = TrainingConfig(method="lora", rank=4, targets=("q_proj", "v_proj"), seq_len=8)
    result = dry_run(tiny(), config)
    q_in, q_out = LAYER_LINEARS["q_proj"]
    v_in, v_out = LAYER_LINEARS["v_proj"]
    assert result.trainable_params == LAYERS * 4 * (q_in + q_out + v_in + v_out)


def test_lora_on_the_output_head() -> None:
    config = TrainingConfig(method="lora", rank=16, targets=("lm_head",), seq_len=8)
    head = 16 * (HIDDEN + VOCAB)
    assert dry_run(tiny(), config).trainable_params == head
    both = config.with_changes(targets=("all-linear", "lm_head"))
    assert dry_run(tiny(), both).trainable_params == lora_params(16) + head


def test_dora_adds_a_magnitude_per_output_feature() -> None:
    result = dry_run(tiny(), TrainingConfig(method="lora", rank=8, seq_len=8, dora=True))
    magnitudes = LAYERS * sum(out for _, out in LAYER_LINEARS.values())
    assert result.trainable_params == lora_params(8) + magnitudes


def test_targets_the_model_lacks_raise_a_dry_run_error() -> None:
    phi3 = tiny(model_type="phi3", pad_token_id=None)  # fused qkv_proj / gate_up_proj
    config = TrainingConfig(method="lora", targets=("q_proj", "v_proj"), seq_len=8)
    with pytest.raises(DryRunError, match="all-linear"):
        dry_run(phi3, config)
    assert dry_run(phi3, config.with_changes(targets=("all-linear",))).trainable_params > 0


def test_unknown_architecture_raises_a_dry_run_error() -> None:
    with pytest.raises(DryRunError, match="cannot build"):
        dry_run(tiny(model_type="no-such-model"), TrainingConfig(seq_len=8))


def test_qlora_persistent_memory_is_half_a_byte_per_quantised_param() -> None:
    arch = tiny()
    result = dry_run(arch, TrainingConfig(method="qlora", rank=8, seq_len=8, double_quant=True))
    assert result.total_params == params_of(arch) + lora_params(8)
    assert result.trainable_params == lora_params(8)

    packed = absmax = 0
    for fan_in, fan_out in LAYER_LINEARS.values():
        n = fan_in * fan_out
        blocks = math.ceil(n / 64)
        packed += (n + 1) // 2
        # uint8 absmax per 64 + fp32 absmax per 256 blocks + fp32 offset + NF4 code book (16)
        absmax += blocks + 4 * math.ceil(blocks / 256) + 4 + 4 * 16
    assert LAYERS * packed == LINEAR_PARAMS // 2
    quantised = LAYERS * (packed + absmax)
    rest_bf16 = 2 * (params_of(arch) - LINEAR_PARAMS)  # embeddings, lm_head, norms
    adapters = 12 * lora_params(8)
    assert result.persistent_bytes == quantised + rest_bf16 + adapters + ROTARY_BYTES + 4 * (
        2 * LAYERS * len(LAYER_LINEARS)  # AdamW's fp32 step scalar per adapter matrix
    )
    assert any("4-bit" in note for note in result.notes)

    lora = dry_run(arch, TrainingConfig(method="lora", rank=8, seq_len=8))
    saved = lora.persistent_bytes - result.persistent_bytes
    assert saved == 2 * LINEAR_PARAMS - LAYERS * (packed + absmax)


def test_qlora_without_double_quant_stores_fp32_absmax() -> None:
    arch = tiny()
    dq = dry_run(arch, TrainingConfig(method="qlora", seq_len=8, double_quant=True))
    plain = dry_run(arch, TrainingConfig(method="qlora", seq_len=8, double_quant=False))
    expected = 0
    for fan_in, fan_out in LAYER_LINEARS.values():
        blocks = math.ceil(fan_in * fan_out / 64)
        # fp32 instead of uint8 absmax, minus the nested fp32 absmax and offset
        expected += 3 * blocks - 4 * math.ceil(blocks / 256) - 4
    assert plain.persistent_bytes - dq.persistent_bytes == LAYERS * expected


def test_qlora_with_dora_runs() -> None:
    result = dry_run(tiny(), TrainingConfig(method="qlora", rank=8, seq_len=8, dora=True))
    magnitudes = LAYERS * sum(out for _, out in LAYER_LINEARS.values())
    assert result.trainable_params == lora_params(8) + magnitudes


def test_gradient_checkpointing_lowers_the_peak_at_long_sequences() -> None:
    arch = tiny(num_hidden_layers=4, vocab_size=128)
    on = dry_run(arch, TrainingConfig(method="lora", seq_len=1024, grad_ckpt=True), steps=1)
    off = dry_run(arch, TrainingConfig(method="lora", seq_len=1024, grad_ckpt=False), steps=1)
    assert on.peak_allocated_bytes < 0.6 * off.peak_allocated_bytes
    assert on.persistent_bytes == off.persistent_bytes


@pytest.mark.parametrize(
    "optim",
    [
        "adamw_torch_fused",
        "sgd",
        "adafactor",
        "adamw_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
    ],
)
def test_optimizers(optim: str) -> None:
    arch = tiny()
    params = params_of(arch)
    config = TrainingConfig(method="full", pure_bf16=True, seq_len=8, optim=optim)
    result = dry_run(arch, config)
    state_bytes = result.persistent_bytes - 2 * params - ROTARY_BYTES
    if optim == "adamw_torch_fused":
        assert state_bytes == 4 * params + 4 * n_params_tensors(arch)
    elif optim == "sgd":
        assert state_bytes == 0
    elif optim == "adafactor":
        assert 0 < state_bytes < 0.2 * params  # factored second moments: rows + columns
    elif optim.endswith("8bit"):
        # bitsandbytes: uint8 states + fp32 absmax per 256 for tensors of 4096+ elements,
        # fp32 states for smaller ones and (HF Trainer's override) for embeddings
        sizes = [n for i, o in LAYER_LINEARS.values() for n in [i * o] * LAYERS]
        sizes.append(VOCAB * HIDDEN)  # lm_head: a linear, so 8-bit too
        big = [n for n in sizes if n >= 4096]
        assert len(big) < len(sizes)  # k_proj and v_proj are small here
        eight_bit = sum(2 * n + 8 * math.ceil(n / 256) for n in big)
        fp32 = 8 * (params - sum(big))
        assert state_bytes == eight_bit + fp32
    else:  # paged 32-bit
        assert state_bytes == 8 * params
    assert result.paged_bytes == 0  # no tensor here reaches bitsandbytes' paging size


@pytest.mark.parametrize(
    ("optim", "state_bytes"), [("paged_adamw_32bit", 8), ("paged_adamw_8bit", 2)]
)
def test_paged_optimizer_states_are_reported(optim: str, state_bytes: int) -> None:
    vocab = 2048  # embeddings of 131072 elements: above bitsandbytes' 1e5 paging threshold
    config = TrainingConfig(method="full", pure_bf16=True, seq_len=8, optim=optim)
    result = dry_run(tiny(vocab_size=vocab), config, steps=1)
    # embed_tokens keeps fp32 states (HF Trainer's override), lm_head follows the optimizer
    assert result.paged_bytes == vocab * HIDDEN * (8 + state_bytes)
    assert any("unified memory" in note for note in result.notes)


def test_notes_for_what_is_not_simulated() -> None:
    config = TrainingConfig(
        method="lora",
        seq_len=8,
        attn="flash_attention_2",
        num_gpus=4,
        sharding="zero3",
        offload="optimizer",
    )
    notes = " | ".join(dry_run(tiny(), config).notes)
    assert "flash_attention_2" in notes
    assert "sharding is not simulated" in notes
    assert "offload" in notes


def test_flash_attention_runs_where_transformers_refuses_sdpa() -> None:
    """Gemma-2 (logit softcapping): no SDPA in transformers, but FlashAttention-2 is fine."""
    gemma2 = tiny(model_type="gemma2", head_dim=HEAD_DIM, pad_token_id=None, vocab_size=128)
    config = TrainingConfig(method="lora", seq_len=512, grad_ckpt=False)
    eager = dry_run(gemma2, config.with_changes(attn="sdpa"), steps=1)
    assert any("eager used" in note for note in eager.notes)
    flash = dry_run(gemma2, config.with_changes(attn="flash_attention_2"), steps=1)
    assert not any("eager" in note for note in flash.notes)
    assert flash.peak_allocated_bytes < 0.5 * eager.peak_allocated_bytes  # no S x S scores


def test_moe_needs_bf16_weights() -> None:
    arch = tiny(
        model_type="mixtral",
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    with pytest.raises(DryRunError, match="mixture-of-experts"):
        dry_run(arch, TrainingConfig(method="full", seq_len=8))
    result = dry_run(arch, TrainingConfig(method="lora", seq_len=8), steps=1)
    assert result.trainable_params > 0


def test_result_to_dict_and_steps() -> None:
    result = dry_run(tiny(), TrainingConfig(method="lora", seq_len=8), steps=1)
    assert isinstance(result, DryRunResult)
    data = result.to_dict()
    assert data["steps"] == 1
    assert data["peak_allocated_bytes"] == result.peak_allocated_bytes
    assert data["peak_allocated_gib"] == round(result.peak_allocated_bytes / GIB, 3)
    assert set(data["phase_peaks_bytes"]) == set(PHASES)
    assert data["peak_phase"] in PHASES
    assert result.peak_allocated_bytes == max(result.phase_peaks.values())
    assert result.seconds > 0
    with pytest.raises(ValueError):
        dry_run(tiny(), TrainingConfig(seq_len=8), steps=0)
