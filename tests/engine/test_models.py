"""Model resolution: local dir, profile alias, HF cache (offline), unknown -> suggestions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import FtuiError, UnknownModelError
from engine.models import resolve_model

TINY = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
}


def test_a_local_directory_with_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    arch = resolve_model(str(tmp_path))
    assert arch.source == "dir" and arch.path == str(tmp_path)
    assert (arch.hidden_size, arch.num_layers, arch.num_kv_heads, arch.head_dim) == (64, 2, 2, 16)
    assert arch.tied_embeddings is True  # absent key: transformers' default


def test_a_directory_without_config_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FtuiError, match=r"without a config\.json"):
        resolve_model(str(tmp_path))


def test_a_broken_config_json_names_the_position(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(FtuiError, match="line 2"):
        resolve_model(str(tmp_path))


def test_a_config_of_something_that_is_not_a_language_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", "depths": [3, 4]}))
    with pytest.raises(FtuiError, match="decoder language models"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    "spelling",
    ["llama-3.1-8b", "meta-llama/Llama-3.1-8B", "Llama-3.1-8B", "LLAMA 3.1 8B", "llama_3_1_8b"],
)
def test_profile_names_are_case_and_punctuation_insensitive(spelling: str) -> None:
    arch = resolve_model(spelling)
    assert arch.source == "profile" and arch.profile_id == "llama-3.1-8b"
    assert arch.hf_id == "meta-llama/Llama-3.1-8B"
    assert (arch.hidden_size, arch.num_layers, arch.vocab_size) == (4096, 32, 128256)
    assert arch.tied_embeddings is False


def test_moe_fields_are_read() -> None:
    arch = resolve_model("mixtral-8x7b")
    assert arch.is_moe and arch.num_experts == 8 and arch.experts_per_token == 2


def _fake_hf_cache(root: Path, repo_id: str, config: dict[str, object]) -> Path:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_the_local_hf_cache_is_searched_offline(tmp_path: Path) -> None:
    snapshot = _fake_hf_cache(tmp_path, "acme/Tiny-Chat-1M", TINY)
    for spelling in ("acme/Tiny-Chat-1M", "tiny-chat-1m"):
        arch = resolve_model(spelling, hf_cache=tmp_path)
        assert arch.source == "hf-cache" and arch.path == str(snapshot)
        assert arch.hf_id == "acme/Tiny-Chat-1M"


def test_the_hf_cache_honours_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hf_cache(tmp_path / "hub", "acme/Other-2M", TINY)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve_model("acme/other-2m").source == "hf-cache"


def test_an_unknown_model_lists_the_closest_matches(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model("llama-3.1-9b", hf_cache=tmp_path)
    assert "llama-3.1-8b" in info.value.suggestions
    assert "did you mean" in str(info.value)


def test_multimodal_configs_use_their_text_part(tmp_path: Path) -> None:
    config = {"model_type": "llava", "text_config": dict(TINY, hidden_size=96), "vision_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(tmp_path)).hidden_size == 96
