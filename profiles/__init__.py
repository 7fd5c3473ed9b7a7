"""Built-in GPU and model profiles (data), and the tiny loader that reads them.

Each profile file is TOML shipped as package data. Every entry cites its public source.
This package imports nothing else of ftui's.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "GpuProfile",
    "ModelProfile",
    "ProfileError",
    "find_gpu_profile",
    "find_model_profile",
    "gpu_profiles",
    "match_gpu_by_device_name",
    "model_profile_names",
    "model_profiles",
    "normalize_name",
]

# PCIe x16 one-way bandwidth by generation, GB/s (after 128b/130b encoding; 6.0 after FLIT).
PCIE_X16_GBS = {3: 15.75, 4: 31.5, 5: 63.0, 6: 121.0}

# Words that vendors put in front of a GPU's name and users leave out ("rtx4090" == "4090").
_GPU_NAME_NOISE = ("nvidia", "geforce", "tesla", "rtx", "quadro")


class ProfileError(ValueError):
    """A profile file that is missing a field or has a field of the wrong type."""


def normalize_name(name: str) -> str:
    """Case- and punctuation-insensitive key: 'Meta-Llama/Llama-3.1-8B' -> 'metallamallama318b'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class GpuProfile:
    id: str
    name: str
    aliases: tuple[str, ...]
    nvml_names: tuple[str, ...]
    architecture: str
    compute_capability: str
    memory_gb: float
    memory_total_mib: int
    bf16: bool
    bf16_tflops: float
    fp16_tflops: float
    memory_bandwidth_gbs: float
    interconnect: str
    nvlink_gbs: float
    pcie_gen: int
    tdp_w: float
    price_usd_per_hour: float
    price_date: str
    price_source: str
    source: str
    note: str = ""
    # Host RAM a typical cloud node offers per GPU of this kind (GiB): the plan's host-memory
    # check when planning for GPUs that are not here (see gpus.toml).
    host_ram_gib_per_gpu: float = 64.0

    @property
    def memory_total_bytes(self) -> int:
        return self.memory_total_mib * 1024 * 1024

    @property
    def pcie_gbs(self) -> float:
        """One-way bandwidth of the card's PCIe x16 link, GB/s."""
        return PCIE_X16_GBS.get(self.pcie_gen, PCIE_X16_GBS[4])

    @property
    def interconnect_gbs(self) -> float:
        """One-way GPU-to-GPU bandwidth inside a node: NVLink (the profile gives both
        directions together) or, without it, PCIe."""
        return self.nvlink_gbs / 2 if self.nvlink_gbs > 0 else self.pcie_gbs

    @property
    def compute_capability_tuple(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class ModelProfile:
    id: str
    hf_id: str
    family: str
    params_b: float
    license: str
    source: str
    config: dict[str, Any] = field(hash=False, compare=False)
    aliases: tuple[str, ...] = ()
    note: str = ""


_GPU_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "name": str,
    "aliases": list,
    "nvml_names": list,
    "architecture": str,
    "compute_capability": str,
    "memory_gb": (int, float),
    "memory_total_mib": int,
    "bf16": bool,
    "bf16_tflops": (int, float),
    "fp16_tflops": (int, float),
    "memory_bandwidth_gbs": (int, float),
    "interconnect": str,
    "nvlink_gbs": (int, float),
    "pcie_gen": int,
    "tdp_w": (int, float),
    "price_usd_per_hour": (int, float),
    "price_date": str,
    "price_source": str,
    "source": str,
}

_MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "hf_id": str,
    "family": str,
    "params_b": (int, float),
    "license": str,
    "source": str,
    "config": dict,
}

# Architecture keys every model profile's config must carry (config.json names).
MODEL_CONFIG_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model_type": str,
    "architectures": list,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "num_key_value_heads": int,
    "vocab_size": int,
    "tie_word_embeddings": bool,
    "max_position_embeddings": int,
}


def _check_fields(
    entry: dict[str, Any], spec: dict[str, type | tuple[type, ...]], where: str
) -> None:
    for key, kind in spec.items():
        if key not in entry:
            raise ProfileError(f"{where}: missing field {key!r}")
        value = entry[key]
        # bool is an int subclass: keep numbers and flags apart.
        if isinstance(value, bool) and kind is not bool:
            raise ProfileError(f"{where}: field {key!r} must be {kind}, got a bool")
        if not isinstance(value, kind):
            raise ProfileError(f"{where}: field {key!r} must be {kind}, got {type(value).__name__}")


def _read_toml(filename: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profiles/{filename}: {exc}") from exc


def parse_gpu_profiles(data: dict[str, Any], filename: str = "gpus.toml") -> tuple[GpuProfile, ...]:
    out: list[GpuProfile] = []
    for i, entry in enumerate(data.get("gpu", [])):
        where = f"profiles/{filename} gpu #{i + 1} ({entry.get('id', '?')})"
        _check_fields(entry, _GPU_FIELDS, where)
        kwargs = {k: entry[k] for k in _GPU_FIELDS}
        kwargs["aliases"] = tuple(entry["aliases"])
        kwargs["nvml_names"] = tuple(entry["nvml_names"])
        host_ram = entry.get("host_ram_gib_per_gpu", 64.0)
        if isinstance(host_ram, bool) or not isinstance(host_ram, (int, float)) or host_ram <= 0:
            raise ProfileError(f"{where}: host_ram_gib_per_gpu must be a positive number")
        out.append(
            GpuProfile(**kwargs, note=entry.get("note", ""), host_ram_gib_per_gpu=float(host_ram))
        )
    _check_unique([p.id for p in out], filename)
    return tuple(out)


def parse_model_profiles(
    data: dict[str, Any], filename: str = "models.toml"
) -> tuple[ModelProfile, ...]:
    out: list[ModelProfile] = []
    for i, entry in enumerate(data.get("model", [])):
        where = f"profiles/{filename} model #{i + 1} ({entry.get('id', '?')})"
        _check_fields(entry, _MODEL_FIELDS, where)
        _check_fields(entry["config"], MODEL_CONFIG_REQUIRED, where + " config")
        out.append(
            ModelProfile(
                **{k: entry[k] for k in _MODEL_FIELDS},
                aliases=tuple(entry.get("aliases", ())),
                note=entry.get("note", ""),
            )
        )
    _check_unique([p.id for p in out], filename)
    return tuple(out)


def _check_unique(ids: list[str], filename: str) -> None:
    seen: set[str] = set()
    for profile_id in ids:
        if profile_id in seen:
            raise ProfileError(f"profiles/{filename}: duplicate id {profile_id!r}")
        seen.add(profile_id)


@lru_cache(maxsize=1)
def gpu_profiles() -> tuple[GpuProfile, ...]:
    return parse_gpu_profiles(_read_toml("gpus.toml"))


@lru_cache(maxsize=1)
def model_profiles() -> tuple[ModelProfile, ...]:
    return parse_model_profiles(_read_toml("models.toml"))


def _gpu_keys(name: str) -> set[str]:
    """Normalised spellings of a GPU name, with and without vendor words."""
    key = normalize_name(name)
    keys = {key}
    changed = True
    while changed:
        changed = False
        for word in _GPU_NAME_NOISE:
            if key.startswith(word) and len(key) > len(word):
                key = key[len(word) :]
                keys.add(key)
                changed = True
    return keys


@lru_cache(maxsize=1)
def _gpu_index() -> dict[str, GpuProfile]:
    index: dict[str, GpuProfile] = {}
    for profile in gpu_profiles():
        for name in (profile.id, profile.name, *profile.aliases, *profile.nvml_names):
            for key in _gpu_keys(name):
                index.setdefault(key, profile)
    # The short id always wins over an alias of another profile.
    for profile in gpu_profiles():
        index[normalize_name(profile.id)] = profile
    return index


def find_gpu_profile(name: str) -> GpuProfile | None:
    """A GPU profile by id, alias or common spelling ('rtx4090', 'A100 80GB', 'H100-SXM')."""
    index = _gpu_index()
    for key in sorted(_gpu_keys(name), key=len, reverse=True):
        if key in index:
            return index[key]
    return None


def match_gpu_by_device_name(device_name: str) -> GpuProfile | None:
    """The profile of a detected GPU, from the name NVML reports ('NVIDIA H100 80GB HBM3')."""
    for profile in gpu_profiles():
        if device_name in profile.nvml_names:
            return profile
    return find_gpu_profile(device_name)


@lru_cache(maxsize=1)
def _model_index() -> dict[str, ModelProfile]:
    index: dict[str, ModelProfile] = {}
    for profile in model_profiles():
        names = (profile.id, profile.hf_id, profile.hf_id.split("/")[-1], *profile.aliases)
        for name in names:
            index.setdefault(normalize_name(name), profile)
    return index


def find_model_profile(name: str) -> ModelProfile | None:
    """A model profile by id, HF repo id (with or without org) or alias; case/punctuation-free."""
    return _model_index().get(normalize_name(name))


def model_profile_names() -> list[str]:
    """Every name a user might type for a profile (for suggestions)."""
    names: list[str] = []
    for profile in model_profiles():
        names.extend([profile.id, profile.hf_id])
    return names
