"""What particular models' transformers code keeps beyond the generic decoder stack.

Each entry names the code it follows: a causal-mask buffer registered beside the weights
(GPTBigCode), prompt positions prepended to the sequence (CPM-Ant), BERT-style embeddings and
MLM head transform (RoBERTa family). The analytic estimator (engine.plan.estimator) adds these
to its generic terms. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import replace

from engine.models import ModelArch
from engine.training_config import TrainingConfig

# models whose transformers code registers a max_positions x max_positions boolean causal mask
# as a buffer (it moves to the GPU with the weights): one for the model, or one per attention
# layer (True)
MASK_BUFFERS = {"gpt_bigcode": False, "gpt_neo": True, "imagegpt": True}


# models whose decoder stack runs on learned prompt positions prepended to the sequence
# (CPM-Ant: config.prompt_length tokens before the input, cut off before the head)
PROMPT_PREFIX = frozenset({"cpmant"})


def stack_config(arch: ModelArch, config: TrainingConfig) -> TrainingConfig:
    """The setup as the decoder stack sees it: PROMPT_PREFIX models run their layers (and
    attention's keys) on prompt_length more positions than the labels cover."""
    extra = arch.text_config.get("prompt_length") if arch.model_type in PROMPT_PREFIX else 0
    if not isinstance(extra, int) or isinstance(extra, bool) or extra <= 0:
        return config
    return replace(config, seq_len=config.seq_len + extra)


# BERT-style causal LMs: the embeddings sum word, token-type and position embeddings and
# LayerNorm them outside the checkpointed layers; the MLM head runs dense -> GELU -> LayerNorm
# before the vocabulary projection (RobertaLMHead, BertLMPredictionHead)
BERT_STYLE = frozenset(
    {"bert", "roberta", "roberta-prelayernorm", "roc_bert", "xlm-roberta", "xlm-roberta-xl",
     "camembert", "data2vec-text", "xmod", "ernie", "megatron-bert", "rembert"}
)  # fmt: skip


def bert_style_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> tuple[float, float]:
    """Per token for BERT_STYLE models: (embeddings, head). The embeddings keep the word
    embeddings' output and the sum their LayerNorm normalises, until backward reaches them;
    at the loss the head has kept the last hidden state, dense's output (GELU's input) and
    GELU's output (the LayerNorm's input), plus the LayerNorm's output (the decoder's input)
    when the decoder trains or LoRA's fp32 copy of dense's input."""
    if arch.model_type not in BERT_STYLE:
        return 0.0, 0.0
    h = arch.hidden_size
    head = 3 * b * h + (b * h if config.method == "full" else 4 * h if config.is_peft else 0)
    return 2 * b * h, float(head)


def mask_buffer_bytes(arch: ModelArch) -> float:
    """Bytes of the causal-mask buffers MASK_BUFFERS' models keep beside their weights."""
    if arch.model_type not in MASK_BUFFERS:
        return 0.0
    positions = arch.max_positions or 0
    per_layer = MASK_BUFFERS[arch.model_type]
    return float(positions) ** 2 * (max(arch.num_layers, 1) if per_layer else 1)


def recurrent_stack(arch: ModelArch) -> tuple[int, int] | None:
    """HRM-Text: (its physical decoder layers, the layer runs that keep activations for
    backward). Its H and L stacks of num_layers_per_stack layers each run in cycles: per H
    cycle, L_cycles runs of the L stack (only the last L_bp_cycles with gradients, the rest
    under no_grad) and one of the H stack; num_hidden_layers counts cache slots, not layers."""
    if arch.model_type != "hrm_text":
        return None
    cfg = arch.text_config
    per_stack = cfg.get("num_layers_per_stack")
    cycles = cfg.get("H_cycles")
    low = cfg.get("L_cycles")
    if not all(isinstance(v, int) and v > 0 for v in (per_stack, cycles, low)):
        return None
    assert isinstance(per_stack, int) and isinstance(cycles, int) and isinstance(low, int)
    raw = [int(v) for v in cfg.get("L_bp_cycles") or ()]
    padded = [1] * max(0, cycles - len(raw)) + raw  # as HrmTextModel pads L_bp_cycles
    graded = sum(min(padded[i] if i < len(padded) else 1, low) for i in range(cycles))
    return 2 * per_stack, per_stack * (graded + cycles)


def embed_projection_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> tuple[float, float]:
    """Per token, (embeddings side, head side) for OPT's word_embed_proj_dim projections
    (project_in before the layers, project_out after them, outside the checkpointed layers):
    LoRA keeps an fp32 copy of each one's input, a full fine-tune the input itself."""
    width = arch.text_config.get("word_embed_proj_dim")
    h = arch.hidden_size
    if not isinstance(width, int) or isinstance(width, bool) or width in (0, h):
        return 0.0, 0.0
    if config.method == "full":
        return float(b * width), float(b * h)
    if config.is_peft:
        return float(4 * width), float(4 * h)
    return 0.0, 0.0


# models whose transformers code keeps the residual stream between decoder layers in fp32,
# whatever the compute dtype (ZayaModel's and ZayaDecoderLayer's `residual_in_fp32` path: the
# layers' outputs, hence checkpointing's saved inputs and the gradients between layers)
FP32_RESIDUAL = frozenset({"zaya"})


def residual_bytes(arch: ModelArch, b: int) -> int:
    """Bytes per element of the residual stream between layers (see FP32_RESIDUAL)."""
    return 4 if arch.model_type in FP32_RESIDUAL else b


def carried_state_bytes(arch: ModelArch, b: int) -> float:
    """Per token, what a decoder layer hands the next beside the residual stream, which
    checkpointing keeps with each layer's input: ZAYA's router state (ZayaRouter's
    router_hidden_size-wide down projection, cloned and added into the next layer's router)."""
    width = arch.text_config.get("router_hidden_size")
    if not arch.is_moe or not isinstance(width, int) or isinstance(width, bool):
        return 0.0
    return float(b * width)
