"""Every causal-LM architecture of the installed transformers, small: does ftui plan it right?

For each model type transformers maps to a causal LM, its default config is shrunk (2-4
layers, 4 experts, a small hidden size, a small vocabulary) and checked:
  1. ftui's parameter count (engine/plan/params.py) equals the model's own count;
  2. the dry run completes, or declines in one line;
  3. the analytic estimate is within `TOLERANCE` of the dry run for LoRA and a full
     fine-tune at two sequence lengths.

tests/engine/test_architectures.py runs it per architecture; `python -m
engine.plan.dryrun.coverage` prints the table docs/estimator.md shows. torch and transformers
are imported inside the functions only.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FtuiError
from engine.models import ModelArch, check_causal_lm
from engine.training_config import TrainingConfig

TOLERANCE = 0.10
SEQ_LENS = (128, 512)
# Mamba-1's PyTorch scan runs token by token (slow under fake tensors): shorter sequences,
# shorter still where each head scans on its own (Zamba: SCAN_SEQ_LENS / heads)
SCAN_SEQ_LENS = (32, 128)
METHODS = ("lora", "full")
LAYERS, EXPERTS, EXPERTS_PER_TOKEN = 2, 4, 2
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, MOE_FFN, VOCAB = 256, 4, 2, 64, 512, 128, 2048

# Layer counts and dimensions as config keys spell them; a key is only changed when present.
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_top_k",
    "num_selected_experts",
    "top_k",
    "moe_k",
)
# State-space and linear-attention blocks, shrunk together: 8 heads over twice the hidden size
# (head dims follow), a smaller state. Their PyTorch scans cost heads x chunk per token.
SSM_HEADS, SSM_STATE = 8, 64
_SSM_HEAD_KEYS = ("mamba_n_heads", "mamba_num_heads", "n_mamba_heads")
_SSM_HEAD_DIM_KEYS = ("mamba_d_head", "mamba_head_dim", "mamba_headdim")
_SSM_STATE_KEYS = ("mamba_d_state", "ssm_state_size")
_LINEAR_ATTENTION = {
    "linear_num_heads": HEADS,
    "linear_head_dim": HEAD_DIM,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
}
_PATTERN_KEYS = (
    "first_k_dense_replace",
    "interleave_moe_layer_step",
    "full_attention_interval",
    "sliding_window_pattern",
    "attn_layer_period",
    "expert_layer_period",
    "decoder_sparse_step",
    "mlp_only_layers",
)
_DIMENSIONS = {
    "hidden_size": HIDDEN,
    "n_embd": HIDDEN,
    "d_model": HIDDEN,
    "num_attention_heads": HEADS,
    "n_head": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "intermediate_size": FFN,
    "n_inner": FFN,
    "ffn_dim": FFN,
    "moe_intermediate_size": MOE_FFN,
    "shared_expert_intermediate_size": MOE_FFN,
    "intermediate_size_mlp": FFN,
    "vocab_size": VOCAB,
    # multi-head latent attention
    "q_lora_rank": 64,
    "kv_lora_rank": 32,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "n_group": 1,
    "num_expert_group": 1,
    "topk_group": 1,
    # Zamba-2's shared attention block works at twice the hidden size
    "attention_hidden_size": 2 * HIDDEN,
    "attention_head_dim": 2 * HIDDEN // HEADS,
}


@dataclass
class Measurement:
    method: str
    seq_len: int
    dry_gib: float
    analytic_gib: float

    @property
    def error(self) -> float:
        return (self.analytic_gib - self.dry_gib) / self.dry_gib if self.dry_gib else 0.0


@dataclass
class CoverageRow:
    model_type: str
    status: str  # "checked", "declined" (no setup could be dry-run) or "not planned"
    reason: str = ""
    params: int = 0  # ftui's count
    model_params: int = 0  # the model's own count
    shrunk: str = ""  # what was shrunk
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def worst_error(self) -> float:
        return max((abs(m.error) for m in self.measurements), default=0.0)


def causal_lm_types() -> list[str]:
    """Every model type the installed transformers maps to a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _shrink(cfg: dict[str, Any], dims: bool) -> dict[str, Any]:
    out = dict(cfg)
    layers = next((out[k] for k in _LAYER_KEYS if isinstance(out.get(k), int)), None)
    # Patterned stacks (dense first layers, interleaved MoE or attention types) keep 4 layers
    # so that each kind of layer is there.
    patterned = any(out.get(k) not in (None, 0, 1, []) for k in _PATTERN_KEYS) or any(
        isinstance(out.get(k), list) for k in ("layer_types", "layers_block_type")
    )
    n_layers = min(layers or LAYERS, 4 if patterned else LAYERS)
    for key in _LAYER_KEYS:
        if isinstance(out.get(key), int):
            out[key] = n_layers
    for key, value in list(out.items()):
        if isinstance(value, list) and len(value) == layers and key.endswith(("types", "_type")):
            out[key] = _sample_pattern(value, n_layers)  # each kind of layer stays
        elif isinstance(value, list) and len(value) == layers and key.endswith("_layers"):
            out[key] = value[:n_layers]
    kinds = out.get("layers_block_type")
    if out.get("model_type") == "zamba" and isinstance(kinds, list) and kinds.count("hybrid") == 1:
        # Zamba ties its shared attention block from the first hybrid layer to the others, and
        # transformers cannot build one with a single hybrid layer: keep a second, after one
        # Mamba layer (every layer scans token by token, head by head: no more of them)
        out["layers_block_type"] = [next(k for k in kinds if k != "hybrid"), "hybrid", "hybrid"]
        for key in _LAYER_KEYS:
            if isinstance(out.get(key), int):
                out[key] = 3
    if isinstance(out.get("hybrid_layer_ids"), list) and isinstance(
        out.get("layers_block_type"), list
    ):  # Zamba-2 saves the derived list: derive it again
        kinds = out["layers_block_type"]
        out["hybrid_layer_ids"] = [i for i, kind in enumerate(kinds) if kind == "hybrid"]
    if isinstance(out.get("first_k_dense_replace"), int) and out["first_k_dense_replace"] > 1:
        out["first_k_dense_replace"] = 1  # one dense layer, then MoE layers
    for key in ("num_nextn_predict_layers", "mtp_num_layers", "num_mtp_layers"):
        if isinstance(out.get(key), int) and out[key] > 1:
            out[key] = 1
    for key in ("attn_layer_indices", "mlp_only_layers", "moe_layers"):
        if isinstance(out.get(key), list):
            out[key] = [i for i in out[key] if isinstance(i, int) and i < n_layers] or (
                [n_layers - 1] if key == "attn_layer_indices" else out[key][:0]
            )
    for key in _EXPERT_KEYS:
        if isinstance(out.get(key), int) and out[key] > EXPERTS:
            out[key] = EXPERTS
    experts = any(isinstance(out.get(key), int) and out[key] > 0 for key in _EXPERT_KEYS)
    for key in _TOP_K_KEYS:
        if isinstance(out.get(key), int) and out[key] > EXPERTS_PER_TOKEN:
            out[key] = EXPERTS_PER_TOKEN
        elif key in out and out[key] is None and experts:
            out[key] = EXPERTS_PER_TOKEN  # a default left unset (DeepSeek-V2's top-k)
    if dims:
        for key, value in _DIMENSIONS.items():
            if isinstance(out.get(key), int) and out[key] > value:
                out[key] = value
        rope, rotary = out.get("qk_rope_head_dim"), out.get("partial_rotary_factor")
        if isinstance(rope, int) and "head_dim" in out and out.get("kv_lora_rank"):
            out["head_dim"] = rope  # MLA's head_dim is its rotary part
        elif isinstance(rope, int) and isinstance(out.get("head_dim"), int) and rotary:
            # DeepSeek-V4: the rotary part is a fraction of the (shrunk) head
            out["qk_rope_head_dim"] = int(out["head_dim"] * rotary)
        if out.get("kv_lora_rank"):
            # MLA: keys and values have every query head; qk_head_dim is derived
            out["num_key_value_heads"] = out.get("num_attention_heads", HEADS)
            if "qk_head_dim" in out:
                out["qk_head_dim"] = out.get("qk_nope_head_dim", 0) + out.get("qk_rope_head_dim", 0)
        _shrink_ssm(out)
        if isinstance(out.get("mamba_dt_rank"), int) and isinstance(out.get("hidden_size"), int):
            out["mamba_dt_rank"] = -(-out["hidden_size"] // 16)  # its "auto": hidden / 16
        vocab = out.get("vocab_size")
        for key, value in list(out.items()):
            # special tokens must stay inside the smaller vocabulary
            if key.endswith("token_id") and isinstance(value, int) and isinstance(vocab, int):
                out[key] = min(value, vocab - 1)
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = _shrink(out["text_config"], dims)
    return out


def _sample_pattern(kinds: list[Any], n: int) -> list[Any]:
    """n entries of a per-layer pattern with each kind it has, in their first order."""
    first = list(dict.fromkeys(kinds))[:n]
    out = list(kinds[:n])
    for kind in first:
        if kind not in out:
            # replace the most repeated entry (from the end) with the missing kind
            most = max(out, key=out.count)
            out[len(out) - 1 - out[::-1].index(most)] = kind
    return out


def _shrink_ssm(out: dict[str, Any]) -> None:
    """Mamba and gated linear-attention sizes consistent with the shrunk hidden size."""
    hidden = out.get("hidden_size")
    heads_key = next((k for k in _SSM_HEAD_KEYS if isinstance(out.get(k), int)), None)
    if heads_key is not None and isinstance(hidden, int):
        expand = out.get("mamba_expand")
        inner = (expand if isinstance(expand, int) else 2) * hidden
        out[heads_key] = min(out[heads_key], SSM_HEADS)  # Zamba has 2: not more
        for key in _SSM_HEAD_DIM_KEYS:
            if isinstance(out.get(key), int):
                out[key] = inner // out[heads_key]
        if isinstance(out.get("mamba_d_ssm"), int):
            out["mamba_d_ssm"] = inner
    for key in _SSM_STATE_KEYS:
        if isinstance(out.get(key), int) and out[key] > SSM_STATE:
            out[key] = SSM_STATE
    for key, value in _LINEAR_ATTENTION.items():
        if isinstance(out.get(key), int) and out[key] > value:
            out[key] = value


def small_config(model_type: str) -> tuple[dict[str, Any], str]:
    """The shrunk default config of `model_type` (as config.json holds it) and what was
    shrunk: layers, experts and dimensions, or only layers and experts when transformers
    refuses the smaller dimensions."""
    from transformers import AutoConfig

    from engine.plan.params import build_on_meta

    try:
        default = json.loads(AutoConfig.for_model(model_type).to_json_string())
    except Exception as exc:  # transformers refuses its own default config
        raise RuntimeError(f"transformers cannot make its default config: {exc}") from exc
    failure: Exception | None = None
    attempts = (
        (_shrink(default, True), "layers, experts, dimensions"),
        (_shrink(default, False), "layers, experts"),
        (default, "nothing (no smaller version builds)"),
    )
    for candidate, shrunk in attempts:
        try:
            build_on_meta(candidate)
        except Exception as exc:  # this shrink does not hold together: try a milder one
            failure = exc
            continue
        return candidate, shrunk
    raise RuntimeError(f"transformers cannot build it from its default config: {failure}")


def check_architecture(model_type: str) -> CoverageRow:
    """Shrink, count, dry-run and compare one architecture (see the module's docstring)."""
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline
    from engine.plan.dryrun.model import one_line
    from engine.plan.estimator import GIB, estimate_memory
    from engine.plan.params import param_roles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config, shrunk = small_config(model_type)
        except Exception as exc:  # cannot even be built: nothing to plan
            return CoverageRow(model_type, "not planned", one_line(exc))
    try:
        check_causal_lm(config, model_type)
    except FtuiError as exc:
        return CoverageRow(model_type, "not planned", exc.message, shrunk=shrunk)
    arch = ModelArch(name=model_type, source="dir", config=config)
    roles = param_roles(arch)
    row = CoverageRow(model_type, "checked", shrunk=shrunk, params=roles.total if roles else 0)
    for method in METHODS:
        for seq_len in _seq_lens(arch):
            training = TrainingConfig(
                method=method,
                pure_bf16=method == "full",
                seq_len=seq_len,
                grad_ckpt=roles.checkpointing if roles else True,  # CTRL cannot checkpoint
            )
            dry = dry_run_or_decline(arch, training)
            if isinstance(dry, DryRunDeclined):
                row.reason = f"{method}: {dry.reason}"
                break  # the other method may still run
            row.model_params = dry.total_params - (dry.trainable_params if method == "lora" else 0)
            analytic = estimate_memory(arch, training)
            row.measurements.append(
                Measurement(
                    method, seq_len, dry.peak_allocated_bytes / GIB, analytic.allocated_bytes / GIB
                )
            )
    if not row.measurements:
        row.status = "declined"
    return row


def _seq_lens(arch: ModelArch) -> tuple[int, ...]:
    from engine.plan.activations import MAMBA, layer_kinds
    from engine.plan.zamba1 import ZAMBA1_KINDS, scan_heads

    mixers = {kind.mixer for kind in layer_kinds(arch)}
    if mixers & ZAMBA1_KINDS:  # a token-by-token scan per head, one head after another
        return tuple(max(n // scan_heads(arch), 1) for n in SCAN_SEQ_LENS)
    if MAMBA in mixers:
        return SCAN_SEQ_LENS
    return SEQ_LENS


def markdown_table(rows: list[CoverageRow]) -> str:
    """The table: error of the analytic estimate against the dry run per method, at the
    shorter and the longer sequence (SEQ_LENS, or SCAN_SEQ_LENS for Mamba-1 scans)."""
    short, long = SEQ_LENS
    lines = [
        "| architecture | status | parameters (ftui / model) | "
        + " | ".join(f"{m} {s}" for m in METHODS for s in SEQ_LENS)
        + " | note |",
        "|---|---|---|" + "---:|" * (len(METHODS) * len(SEQ_LENS)) + "---|",
    ]
    for row in rows:
        cells = []
        for method in METHODS:
            done = [m for m in row.measurements if m.method == method]
            cells += [f"{m.error:+.1%}" for m in done] + [""] * (len(SEQ_LENS) - len(done))
        counts = f"{row.params:,} / {row.model_params:,}" if row.model_params else ""
        note = row.reason.replace("|", "/")[:160]
        seqs = sorted({m.seq_len for m in row.measurements})
        if seqs and seqs != [short, long]:
            note = f"at {' and '.join(map(str, seqs))} tokens {note}".strip()
        cells_text = " | ".join(cells)
        lines.append(f"| {row.model_type} | {row.status} | {counts} | {cells_text} | {note} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    types = argv or causal_lm_types()
    rows = []
    for model_type in types:
        start = time.perf_counter()
        row = check_architecture(model_type)
        seconds = time.perf_counter() - start
        rows.append(row)
        print(
            f"{model_type}: {row.status} {row.worst_error:.1%} {seconds:.1f}s {row.reason}",
            file=sys.stderr,
        )
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
