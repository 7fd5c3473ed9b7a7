"""What `ftui download` picks from a hub repo, when a folder counts as a whole model, and the
free-disk refusal. No network: repo listings as the hub reports them, folders on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import FtuiError
from engine.hub.download import DownloadPlan, check_disk, weights_complete
from engine.hub.files import NoWeightsError, RepoFile, download_order, select_files

GB = 10**9


def listing(*entries: tuple[str, int]) -> list[RepoFile]:
    return [RepoFile(path, size) for path, size in entries]


LLAMA = listing(
    (".gitattributes", 1_500), ("LICENSE", 7_000), ("README.md", 40_000),
    ("config.json", 826), ("generation_config.json", 185),
    ("model-00001-of-00004.safetensors", 4_976 * 10**6),
    ("model-00002-of-00004.safetensors", 4_999 * 10**6),
    ("model-00003-of-00004.safetensors", 4_915 * 10**6),
    ("model-00004-of-00004.safetensors", 1_168 * 10**6),
    ("model.safetensors.index.json", 23_950),
    ("original/consolidated.00.pth", 16_060 * 10**6), ("original/params.json", 199),
    ("original/tokenizer.model", 2_183_982),
    ("special_tokens_map.json", 73), ("tokenizer.json", 9_085_657),
    ("tokenizer_config.json", 50_977),
)  # fmt: skip


def test_safetensors_config_and_tokenizer_without_the_original_checkpoint() -> None:
    chosen = select_files(LLAMA)
    names = {f.path for f in chosen.files}
    assert names == {
        "config.json", "generation_config.json", "model.safetensors.index.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
        *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)),
    }  # fmt: skip
    assert chosen.weights_format == "safetensors"
    assert 16.0 * GB < chosen.total_bytes < 16.1 * GB  # not the 32 GB the whole repo holds
    assert "original/consolidated.00.pth" in {f.path for f in chosen.skipped}
    order = [f.path for f in download_order(chosen)]
    assert order[0] == "model.safetensors.index.json" and order[-1] == "config.json"


def test_the_index_decides_which_safetensors_are_the_model() -> None:
    mistral = listing(
        ("config.json", 600), ("consolidated.safetensors", 14_500 * 10**6),
        ("model-00001-of-00002.safetensors", 9_900 * 10**6),
        ("model-00002-of-00002.safetensors", 4_600 * 10**6),
        ("model.safetensors.index.json", 25_000), ("params.json", 200),
        ("tokenizer.model", 587_000), ("tokenizer.json", 1_800_000),
    )  # fmt: skip
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    for known in (None, shards):  # before and after the index is read
        names = {f.path for f in select_files(mistral, shards=known).files}
        assert "consolidated.safetensors" not in names and shards <= names


def test_bin_only_repos_still_download_and_gguf_only_ones_are_refused() -> None:
    old = listing(("config.json", 600), ("pytorch_model.bin", 500 * 10**6), ("vocab.json", 900))
    chosen = select_files(old)
    assert chosen.weights_format == "bin" and "pytorch_model.bin" in {f.path for f in chosen.files}
    both = listing(("config.json", 6), ("model.safetensors", 10), ("pytorch_model.bin", 10))
    assert {f.path for f in select_files(both).files} == {"config.json", "model.safetensors"}
    with pytest.raises(NoWeightsError):
        select_files(listing(("README.md", 10), ("model-Q4_K_M.gguf", 4 * GB)))


def test_repo_code_comes_only_when_trusted() -> None:
    custom = listing(("config.json", 6), ("model.safetensors", 10), ("modeling_x.py", 3))
    assert "modeling_x.py" not in {f.path for f in select_files(custom).files}
    trusted = select_files(custom, trust_remote_code=True)
    assert "modeling_x.py" in {f.path for f in trusted.files}


def test_a_sharded_folder_is_whole_only_with_every_shard(tmp_path: Path) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}})
    )
    (tmp_path / shards[0]).write_bytes(b"x")
    assert not weights_complete(tmp_path)  # an interrupted download
    (tmp_path / shards[1]).write_bytes(b"x")
    assert weights_complete(tmp_path)


def _plan(tmp_path: Path, *, free: int, cached: int = 0, partial: int = 0) -> DownloadPlan:
    chosen = select_files(LLAMA)
    return DownloadPlan(
        repo_id="meta-llama/Llama-3.1-8B", revision="main", commit="0" * 40,
        cache=tmp_path, selection=chosen, etags={}, cached_bytes=cached,
        partial_bytes=partial, free_bytes=free,
    )  # fmt: skip


def test_disk_check_refuses_with_both_numbers_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(FtuiError) as refused:
        check_disk(_plan(tmp_path, free=10 * GB))
    assert "needs 16.1 GB more" in refused.value.message
    assert "has 10.0 GB free" in refused.value.message
    assert "HF_HUB_CACHE" in str(refused.value.fix)
    # What is already on disk (whole files, kept partial ones) does not need room again.
    check_disk(_plan(tmp_path, free=10 * GB, cached=5 * GB, partial=2 * GB))


def test_a_profile_downloaded_into_the_cache_launches_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.run.preflight import local_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--meta-llama--Llama-3.2-1B" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    )
    (snapshot / "model-1.safetensors").write_bytes(b"x")
    with pytest.raises(FtuiError) as half:  # one shard of two: not a model yet
        local_model("llama-3.2-1b")
    assert "not on this machine" in half.value.message
    assert "HF_HUB_OFFLINE" in half.value.message  # the tests run offline: no hub to ask
    (snapshot / "model-2.safetensors").write_bytes(b"x")
    assert local_model("llama-3.2-1b") == ("meta-llama/Llama-3.2-1B", str(snapshot))
