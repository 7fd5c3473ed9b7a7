"""Model resolution: a local directory, a built-in profile, the local Hugging Face cache, the hub.

Order: (1) a directory holding `config.json`; (2) a profile name, case- and punctuation-
insensitive (`llama-3.1-8b`, `meta-llama/Llama-3.1-8B`); (3) the HF hub cache, offline;
(4) an `org/name` id on the hub: its config and tokenizer files (small, no weights) are fetched
into the HF cache (`engine.hub`), unless HF_HUB_OFFLINE is set. An unknown name raises
`UnknownModelError` with the closest matches.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from engine.errors import FtuiError, UnknownModelError
from engine.paths import hf_hub_cache
from profiles import find_model_profile, model_profile_names, normalize_name

# Keys that mean "this is a mixture-of-experts model" across architectures' config.json files.
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_EXPERTS_PER_TOKEN_KEYS = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_top_k",
    "num_selected_experts",
)
# Architectures whose MLP is up -> activation -> down, without a gate.
_PLAIN_MLP_TYPES = frozenset(
    {
        "gpt2",
        "gpt_bigcode",
        "bloom",
        "gpt_neox",
        "falcon",
        "opt",
        "phi",
        "starcoder2",
        "gptj",
        "ctrl",
        "gpt_neox_japanese",
    }
)


@dataclass(frozen=True)
class ModelArch:
    """A model's architecture as its config.json describes it (the text part for multimodal)."""

    name: str  # what the user typed, or the profile id
    source: str  # "dir", "profile", "hf-cache" or "hub" (config just fetched, see step 4)
    config: dict[str, Any] = field(hash=False, compare=False)
    hf_id: str | None = None
    path: str | None = None  # directory holding config.json (dir / hf-cache)
    profile_id: str | None = None

    @cached_property
    def text_config(self) -> dict[str, Any]:
        text = self.config.get("text_config")
        return text if isinstance(text, dict) and "hidden_size" in text else self.config

    def _get(self, *keys: str, default: Any = None) -> Any:
        cfg = self.text_config
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
        return default

    @cached_property
    def model_type(self) -> str:
        return str(self._get("model_type", default=self.config.get("model_type", "unknown")))

    @cached_property
    def hidden_size(self) -> int:
        return int(self._get("hidden_size", "n_embd", "d_model"))

    @cached_property
    def num_layers(self) -> int:
        return int(self._get("num_hidden_layers", "n_layer", "num_layers"))

    @cached_property
    def num_heads(self) -> int:
        return int(self._get("num_attention_heads", "n_head"))

    @cached_property
    def num_kv_heads(self) -> int:
        return int(self._get("num_key_value_heads", default=self.num_heads))

    @cached_property
    def head_dim(self) -> int:
        return int(self._get("head_dim", "dim_head", default=self.hidden_size // self.num_heads))

    @cached_property
    def intermediate_size(self) -> int:
        return int(
            self._get(
                "intermediate_size",
                "n_inner",
                "dim_ff",
                "dff",
                "ffn_dim",
                "ffn_hidden_size",  # Falcon's MLP width
                default=4 * self.hidden_size,
            )
        )

    @cached_property
    def vocab_size(self) -> int:
        return int(self._get("vocab_size"))

    @cached_property
    def tied_embeddings(self) -> bool:
        # transformers' default is True when the key is absent.
        tied = self.config.get("tie_word_embeddings", self.text_config.get("tie_word_embeddings"))
        return True if tied is None else bool(tied)

    @cached_property
    def max_positions(self) -> int | None:
        value = self._get("max_position_embeddings", "n_positions")
        return int(value) if value is not None else None

    @cached_property
    def rope_scaling(self) -> dict[str, Any] | None:
        value = self._get("rope_scaling")
        return value if isinstance(value, dict) else None

    @cached_property
    def num_experts(self) -> int:
        return int(self._get(*_EXPERT_COUNT_KEYS, default=0) or 0)

    @cached_property
    def experts_per_token(self) -> int:
        return int(self._get(*_EXPERTS_PER_TOKEN_KEYS, default=0) or 0)

    @cached_property
    def moe_intermediate_size(self) -> int:
        return int(self._get("moe_intermediate_size", default=self.intermediate_size))

    @cached_property
    def gated_mlp(self) -> bool:
        """SwiGLU/GeGLU (gate, up, down) rather than a plain two-layer MLP."""
        return self.model_type not in _PLAIN_MLP_TYPES

    @cached_property
    def rms_norm(self) -> bool:
        """RMSNorm (upcasts to fp32 inside) rather than LayerNorm."""
        return self.model_type not in _PLAIN_MLP_TYPES

    @cached_property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "hf_id": self.hf_id,
            "path": self.path,
            "profile_id": self.profile_id,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "tied_embeddings": self.tied_embeddings,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "max_positions": self.max_positions,
        }


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise FtuiError(f"cannot read {path}: {exc}", "check the file's permissions") from exc
    except json.JSONDecodeError as exc:
        raise FtuiError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            "restore the model's original config.json",
        ) from exc
    if not isinstance(data, dict):
        raise FtuiError(f"{path} does not hold a JSON object", "restore the model's config.json")
    check_causal_lm(data, str(path))
    return data


# Model types that are encoders (masked LMs, embedders): transformers can bolt a causal head on
# some of them, but a chat fine-tune of one is never what was meant. Used when a config.json
# names no architecture.
_ENCODER_TYPES = frozenset(
    {
        "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "distilbert", "albert", "electra",
        "deberta", "deberta-v2", "camembert", "mpnet", "ernie", "modernbert", "nomic_bert",
        "xlnet", "longformer", "big_bird", "convbert", "funnel", "layoutlm", "megatron-bert",
        "rembert", "roformer", "squeezebert", "mobilebert", "esm", "data2vec-text", "xmod",
    }
)  # fmt: skip
# Causal-LM classes a text-only fine-tune cannot train, and why (checked before the head name,
# as their checkpoints name a causal-LM head).
_DRAFT_MODEL = (
    "it is a draft model for speculative decoding: its forward needs the main Gemma 4 "
    "model's embeddings and key/value states"
)
_NOT_TEXT_LMS = {
    "git": "GIT is an image-to-text model: its loss expects image tokens before the text",
    "gemma4_assistant": _DRAFT_MODEL,
    "gemma4_unified_assistant": _DRAFT_MODEL,
}
# Architecture class names that generate text left to right.
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Dimensions every decoder has; (keys tried in order, smallest sane value).
_DIMENSIONS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("hidden_size", "n_embd", "d_model"), 1),
    (("num_hidden_layers", "n_layer", "num_layers"), 1),
    (("num_attention_heads", "n_head"), 1),
    (("vocab_size",), 1),
)
_OPTIONAL_DIMENSIONS: tuple[tuple[str, int], ...] = (
    ("num_key_value_heads", 1),
    ("head_dim", 1),
    ("intermediate_size", 1),
    ("n_inner", 1),
    ("max_position_embeddings", 1),
    ("n_positions", 1),
    ("moe_intermediate_size", 1),
    *((key, 0) for key in _EXPERT_COUNT_KEYS),
    *((key, 0) for key in _EXPERTS_PER_TOKEN_KEYS),
)


def _bad_dimension(where: str, problem: str) -> FtuiError:
    return FtuiError(
        f"{where}: {problem}",
        "restore the model's original config.json: its dimensions (hidden_size, "
        "num_hidden_layers, num_attention_heads, vocab_size, ...) are positive whole numbers",
    )


def _not_plannable(where: str, problem: str) -> FtuiError:
    return FtuiError(
        f"{where}: {problem}: ftui fine-tunes decoder language models (causal LMs) only",
        "pass a causal language model: its config.json names a ...ForCausalLM architecture "
        "and has hidden_size, num_hidden_layers, num_attention_heads and vocab_size",
    )


def check_causal_lm(config: dict[str, Any], where: str) -> None:
    """Refuse a config that is not a decoder language model with sane, positive dimensions.

    `where` names the config for the message (its path, or the profile)."""
    text_config = config.get("text_config")
    text = text_config if isinstance(text_config, dict) else config
    if config.get("is_encoder_decoder") is True or text.get("is_encoder_decoder") is True:
        raise _not_plannable(where, f"{config.get('model_type', 'it')} is an encoder-decoder model")
    if str(config.get("model_type")) in _NOT_TEXT_LMS:
        raise _not_plannable(where, _NOT_TEXT_LMS[str(config.get("model_type"))])
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        names = [str(a) for a in architectures]
        if not any(name.endswith(_CAUSAL_HEADS) for name in names):
            raise _not_plannable(where, f"its architecture {', '.join(names)} is not a causal LM")
    elif str(text.get("model_type", config.get("model_type", ""))) in _ENCODER_TYPES:
        model_type = text.get("model_type", config.get("model_type"))
        raise _not_plannable(where, f"model_type {model_type!r} is an encoder")
    values: dict[str, int] = {}
    for keys, smallest in _DIMENSIONS:
        present = [key for key in keys if text.get(key) is not None]
        if not present:
            raise _not_plannable(where, f"it lacks {keys[0]}")
        values[keys[0]] = _dimension(text, present[0], smallest, where)
    for key, smallest in _OPTIONAL_DIMENSIONS:
        if text.get(key) is not None:
            values[key] = _dimension(text, key, smallest, where)
    heads, kv_heads = values["num_attention_heads"], values.get("num_key_value_heads")
    if kv_heads is not None and heads % kv_heads:
        raise _bad_dimension(
            where, f"num_attention_heads {heads} do not split into num_key_value_heads {kv_heads}"
        )
    if "head_dim" not in values and values["hidden_size"] < heads:
        raise _bad_dimension(
            where, f"hidden_size {values['hidden_size']} is below num_attention_heads {heads}"
        )


def _dimension(config: dict[str, Any], key: str, smallest: int, where: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        need = "a positive whole number" if smallest else "a whole number, 0 or more"
        raise _bad_dimension(where, f"{key} is {json.dumps(value)}, not {need}")
    return value


def _hf_cache_entries(cache: Path) -> dict[str, Path]:
    """'org/name' -> newest snapshot dir holding a config.json, for every cached model."""
    entries: dict[str, Path] = {}
    try:
        repos = [p for p in cache.iterdir() if p.name.startswith("models--")]
    except OSError:
        return entries
    for repo in repos:
        repo_id = repo.name[len("models--") :].replace("--", "/")
        snapshot = _cached_snapshot(repo)
        if snapshot is not None:
            entries[repo_id] = snapshot
    return entries


def _cached_snapshot(repo: Path) -> Path | None:
    ref = repo / "refs" / "main"
    try:
        if ref.is_file():
            candidate = repo / "snapshots" / ref.read_text().strip()
            if (candidate / "config.json").is_file():
                return candidate
        snaps = sorted(
            (s for s in (repo / "snapshots").iterdir() if (s / "config.json").is_file()),
            key=lambda s: s.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return None
    return snaps[0] if snaps else None


def resolve_model(name: str, *, hf_cache: Path | None = None) -> ModelArch:
    """Find a model's architecture; only an `org/name` found nowhere local asks the hub."""
    text = name.strip()
    if not text:
        raise FtuiError("no model given", "pass --model with a profile name or a local directory")

    path = Path(text).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FtuiError(
                f"{path} is a directory without a config.json",
                "point --model at the folder that holds the model's config.json",
            )
        return ModelArch(
            name=text, source="dir", config=_read_config(config_path), path=str(path.absolute())
        )
    if path.name == "config.json" and path.is_file():
        return ModelArch(
            name=text, source="dir", config=_read_config(path), path=str(path.parent.absolute())
        )

    if text.startswith(("/", "./", "../", "~")) and not path.exists():
        raise FtuiError(
            f"model folder {path} does not exist",
            "pass the folder that holds the model's config.json, or a profile name "
            "(`ftui models` lists them)",
        )
    profile = find_model_profile(text)
    if profile is not None:
        check_causal_lm(dict(profile.config), f"profile {profile.id}")
        return ModelArch(
            name=profile.id,
            source="profile",
            config=dict(profile.config),
            hf_id=profile.hf_id,
            profile_id=profile.id,
        )

    cache = hf_cache if hf_cache is not None else hf_hub_cache()
    cached = _hf_cache_entries(cache)
    wanted = normalize_name(text)
    for repo_id, snapshot in cached.items():
        if wanted in (normalize_name(repo_id), normalize_name(repo_id.split("/")[-1])):
            return ModelArch(
                name=repo_id,
                source="hf-cache",
                config=_read_config(snapshot / "config.json"),
                hf_id=repo_id,
                path=str(snapshot),
            )

    return _resolve_on_hub(text, cache, list(cached))


def _resolve_on_hub(text: str, cache: Path, cached: list[str]) -> ModelArch:
    """Step 4: an `org/name` id, fetched from the hub (config and tokenizer only)."""
    from engine.hub.settings import looks_like_repo_id, offline

    if not looks_like_repo_id(text):
        raise UnknownModelError(text, suggest_models(text, extra=cached))
    if offline():
        error = UnknownModelError(text, suggest_models(text, extra=cached))
        error.fix = f"{error.fix}; HF_HUB_OFFLINE is set: unset it to fetch {text} from the hub"
        raise error
    from engine.hub.download import fetch_config

    snapshot = fetch_config(text, cache=cache)
    return ModelArch(
        name=text,
        source="hub",
        config=_read_config(snapshot / "config.json"),
        hf_id=text,
        path=str(snapshot),
    )


def suggest_models(text: str, *, extra: list[str] | None = None, n: int = 5) -> list[str]:
    """The closest known model names to `text`, best first."""
    names = model_profile_names() + (extra or [])
    by_key: dict[str, str] = {}
    for candidate in names:
        by_key.setdefault(normalize_name(candidate), candidate)
    keys = difflib.get_close_matches(normalize_name(text), list(by_key), n=n, cutoff=0.5)
    out: list[str] = []
    for key in keys:
        if by_key[key] not in out:
            out.append(by_key[key])
    return out
