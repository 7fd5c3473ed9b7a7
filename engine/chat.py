"""Chat with a run's adapters: load the base once, stream answers, stop them, compare.

    target = run_target(find_run("demo"), checkpoint="final", compare="base")
    model = ChatModel.load(target, progress=print_stage)
    answer = model.stream(Conversation().messages("hi"), GenerationSettings(), "final")
    for chunk in answer:          # text as it is generated; answer.stop() from any thread
        ...
    answer.stats                  # tokens, time to first token, tokens/s, finish reason

- One base model per `ChatModel`. Every checkpoint of a run is a named LoRA adapter on it
  (`final`, `checkpoint-80`); `base` is the same model with the adapters disabled. Comparing
  two checkpoints, or a checkpoint with the base, never loads the base weights twice.
- The base loads in the run's precision and quantisation (QLoRA: 4-bit NF4), on the GPU when
  there is one, else on the CPU in fp32 (unquantised).
- Prompts go through the chat template saved with the run's tokenizer (the fallback template
  the trainer used when it had none); the oldest turns are dropped when a conversation no longer
  fits the model's context.
- Generation runs `model.generate` in a thread feeding a `TextIteratorStreamer`; a stopping
  criterion watches a per-answer `threading.Event`, and the reader polls with a timeout, so an
  exception inside `generate` reaches the reader instead of blocking it forever. One lock
  serialises answers on the shared model: the next answer starts after the previous one ended.
- `ChatWorker` is the same engine in a process of its own (`python -m engine.chat --worker`,
  JSON lines over pipes): what the chat screen uses, so rendering never slows generation.
- `ChatLog` keeps each chat session as JSONL in the run's `chats/`, and writes its transcript.

Sections, in order: settings, targets, conversations, the engine protocol, the model, history,
the worker (each could be a module of its own; they share only this file's types).

Headless and cheap to import: torch, transformers and peft load inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from engine.errors import FtuiError
from engine.rundir import RunDir, append_jsonl, read_json

BASE = "base"  # the base model: the adapters disabled
FINAL = "final"
POLL_S = 0.05  # how often a reader waiting for text checks that generate is still alive
ProgressCallback = Callable[[str, int, int], None]  # (stage, index from 1, number of stages)
Message = dict[str, str]


class ChatError(FtuiError):
    """Chat cannot start or an answer failed; the message names the fix."""


# -- settings and measurements --------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling with a seed gives the same answer again
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks, tests)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def validate(self) -> GenerationSettings:
        checks = (
            ("temperature", self.temperature >= 0, "0 (greedy) or more, e.g. 0.7"),
            ("top_p", 0 < self.top_p <= 1, "a value in (0, 1], e.g. 0.9"),
            ("max_new_tokens", self.max_new_tokens >= 1, "1 or more, e.g. 256"),
            ("repetition_penalty", self.repetition_penalty > 0, "1.0 means none, e.g. 1.1"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise ChatError(f"generation setting {name}={getattr(self, name)} is invalid", fix)
        return self

    def with_changes(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AnswerStats:
    tokens: int  # generated tokens, the end-of-turn token included
    ttft_s: float | None  # from the start of generate to the first new token
    tokens_per_s: float | None  # decoding speed after the first token
    total_s: float
    finish_reason: str  # eos, length, stopped

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stopped"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stopped": self.stopped}

    def summary(self) -> str:
        parts = [f"{self.tokens} tokens"]
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s:.2f} s")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.1f} tokens/s")
        if self.finish_reason != "eos":
            parts.append({"length": "max tokens reached"}.get(self.finish_reason, "stopped"))
        return " · ".join(parts)


# -- what to load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterRef:
    name: str  # final, checkpoint-N, adapter
    path: Path


@dataclass(frozen=True)
class ChatTarget:
    """A base model and the adapters to put on it (none: chat with the model itself)."""

    base_model: str  # a local directory or an HF id (in the local cache)
    adapters: tuple[AdapterRef, ...]  # the first one answers by default
    tokenizer_source: str
    label: str  # what the user chats with, for titles: the run id or the model's name
    method: str = "lora"  # lora, qlora, full
    dtype: str = "bf16"  # compute dtype on a GPU (the CPU computes in fp32)
    device: str = "auto"  # auto, cuda, cpu
    run: RunDir | None = None
    compare: str | None = None  # BASE or another adapter's name

    @property
    def primary(self) -> str:
        return self.adapters[0].name if self.adapters else Path(self.base_model).name


def _checkpoint_dirs(run: RunDir) -> list[tuple[str, Path]]:
    found = [(FINAL, run.final)] if _is_model_dir(run.final) else []
    found += [(p.name, p) for p in reversed(run.checkpoints_complete()) if _is_model_dir(p)]
    return found


def _is_model_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def run_checkpoints(run: RunDir) -> list[str]:
    """What a run offers to chat with: `final` first, then the checkpoints, newest first."""
    return [name for name, _ in _checkpoint_dirs(run)]


def _no_adapter_yet(run: RunDir) -> ChatError:
    state = run.read_state()
    status = state.get("status", "unknown")
    return ChatError(
        f"run {run.run_id} ({status}) has no adapter yet: no final/ and no complete checkpoint",
        f"wait for its first checkpoint, or ask for one now with `ftui save {run.run_id}`"
        if status in ("running", "starting")
        else f"see why with `ftui status {run.run_id}`; resume or relaunch it",
    )


def resolve_checkpoint(run: RunDir, ref: str | None = None) -> AdapterRef:
    """`final` (the default; the newest checkpoint while there is no final yet), `checkpoint-N`
    or `N`."""
    available = _checkpoint_dirs(run)
    if not available:
        raise _no_adapter_yet(run)
    if ref is None:
        name, path = available[0]
        return AdapterRef(name, path)
    wanted = ref.strip()
    if wanted.isdigit():
        wanted = f"checkpoint-{int(wanted)}"
    for name, path in available:
        if name == wanted:
            return AdapterRef(name, path)
    raise ChatError(
        f"run {run.run_id} has no checkpoint {ref!r}",
        "choose one of: " + ", ".join(name for name, _ in available),
    )


def read_spec(run: RunDir) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(run.spec.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def run_base_model(run: RunDir, adapter_dir: Path | None = None) -> str:
    """The base a run trained: final/ftui.json, else spec.yaml, else the adapter's config."""
    marker = read_json(run.final / "ftui.json")
    spec = read_spec(run)
    for candidate in (
        marker.get("base_model_path"),
        spec.get("model_path"),
        marker.get("base_model"),
        spec.get("model"),
        read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path")
        if adapter_dir
        else None,
    ):
        if candidate and (not str(candidate).startswith(("/", ".")) or Path(candidate).is_dir()):
            return str(candidate)
    raise ChatError(
        f"cannot tell which base model run {run.run_id} trained",
        "chat with its adapter directly: ftui chat --model BASE --adapter DIR",
    )


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file()


def run_target(
    run: RunDir, checkpoint: str | None = None, compare: str | None = None, device: str = "auto"
) -> ChatTarget:
    """What `ftui chat RUN [--checkpoint N] [--compare base|CHECKPOINT]` loads."""
    ref = resolve_checkpoint(run, checkpoint)
    training = read_spec(run).get("training") or {}
    method = str(training.get("method") or read_json(run.final / "ftui.json").get("method") or "")
    dtype = str(training.get("dtype") or "bf16")
    if method == "full" or not (ref.path / "adapter_config.json").is_file():
        if compare:
            raise ChatError(
                f"run {run.run_id} is a full fine-tune: there is no adapter to compare",
                "compare it with its base by running `ftui chat --model BASE` beside it",
            )
        return ChatTarget(str(ref.path), (), str(ref.path), f"{run.run_id} · {ref.name}",
                          "full", dtype, device, run)  # fmt: skip
    adapters = [ref]
    if compare and compare != BASE:
        other = resolve_checkpoint(run, compare)
        if other.name == ref.name:
            raise ChatError(
                f"--compare {compare} is the checkpoint already chatting", "compare with base"
            )
        adapters.append(other)
        compare = other.name
    base = run_base_model(run, ref.path)
    tokenizer = ref.path if _has_tokenizer(ref.path) else run.final
    return ChatTarget(
        base_model=base,
        adapters=tuple(adapters),
        tokenizer_source=str(tokenizer if _has_tokenizer(tokenizer) else base),
        label=run.run_id,
        method=method or "lora",
        dtype=dtype,
        device=device,
        run=run,
        compare=compare,
    )


def resolve_base_model(model: str) -> str:
    """A local model directory, or the cached snapshot of a hub model or profile."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().absolute())
    from engine.models import resolve_model

    arch = resolve_model(model)
    if arch.path:
        return arch.path
    if arch.hf_id:
        cached = resolve_model(arch.hf_id)
        if cached.path:
            return cached.path
    raise ChatError(
        f"the weights of {model} are not on this machine",
        f"download them first (`hf download {arch.hf_id or model}`) or pass a local directory",
    )


def adapter_target(
    model: str,
    adapter: str | None = None,
    *,
    method: str = "lora",
    dtype: str = "bf16",
    device: str = "auto",
    compare: str | None = None,
) -> ChatTarget:
    """What `ftui chat --model M [--adapter DIR]` loads, outside any run."""
    base = resolve_base_model(model)
    if adapter is None:
        if compare:
            raise ChatError("--compare needs an adapter", "add --adapter DIR")
        return ChatTarget(base, (), base, Path(base).name, "full", dtype, device)
    path = Path(adapter).expanduser().absolute()
    if not (path / "adapter_config.json").is_file():
        raise ChatError(
            f"{path} holds no adapter_config.json",
            "point --adapter at a PEFT adapter directory (a run's final/ or checkpoint-N/)",
        )
    if compare not in (None, BASE):
        raise ChatError("outside a run, --compare can only be base", "use --compare base")
    tokenizer = str(path) if _has_tokenizer(path) else base
    return ChatTarget(base, (AdapterRef("adapter", path),), tokenizer, path.name,
                      method, dtype, device, None, compare)  # fmt: skip


# -- conversations ---------------------------------------------------------------------------------


@dataclass
class Conversation:
    """A system prompt and the turns so far (what the model sees)."""

    system: str = ""
    turns: list[Message] = field(default_factory=list)

    def messages(self, prompt: str) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return [*head, *self.turns, {"role": "user", "content": prompt}]

    def add(self, prompt: str, answer: str) -> None:
        self.turns += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer.strip()},
        ]

    def clear(self) -> None:
        self.turns = []


def drop_oldest_turn(messages: list[Message]) -> list[Message] | None:
    """The messages without their oldest user/assistant exchange; None when none is left."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or len(messages) - first < 3:
        return None
    end = first + 1
    while end < len(messages) - 1 and messages[end]["role"] != "user":
        end += 1
    return messages[:first] + messages[end:]


# -- the engine interface the TUI uses (tests inject a fake one) -------------------------------


class AnswerStream(Protocol):
    """One answer being generated: iterate for text; `stop()` from any thread."""

    def __iter__(self) -> Iterator[str]: ...

    def stop(self) -> None: ...

    @property
    def stats(self) -> AnswerStats | None: ...


class ChatEngine(Protocol):
    device: str

    def variants(self) -> list[str]: ...

    def use(self, variant: str) -> None: ...

    def stream(
        self, messages: list[Message], settings: GenerationSettings, variant: str
    ) -> AnswerStream: ...

    def close(self) -> None: ...


# -- the model ------------------------------------------------------------------------------


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ChatError("--device cuda, but torch sees no GPU", "use --device cpu or auto")
    if requested in ("cuda", "cpu"):
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_base(target: ChatTarget, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = torch.float32 if device == "cpu" else dtypes.get(target.dtype, torch.bfloat16)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": 0 if device == "cuda" else "cpu"}}
    # QLoRA bases load in 4-bit NF4 on the GPU. On the CPU they load unquantised: 4-bit saves
    # nothing there, and bitsandbytes' CPU kernel for one-token steps rejects small layers.
    if target.method == "qlora" and device == "cuda":
        from transformers import BitsAndBytesConfig

        quantization: Any = BitsAndBytesConfig
        kwargs["quantization_config"] = quantization(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    local = Path(target.base_model).is_dir()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            target.base_model, local_files_only=True, **kwargs
        )
    except OSError as exc:
        raise ChatError(
            f"cannot load the base model {target.base_model}: {exc}".splitlines()[0],
            "check the directory" if local else f"download it: hf download {target.base_model}",
        ) from exc
    model.eval()
    return model


class ChatModel:
    """A loaded base model with its adapters and tokenizer. Answers one at a time."""

    def __init__(self, model: Any, tokenizer: Any, target: ChatTarget, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.target = target
        self.device = device
        self.lock = threading.Lock()  # one generate at a time on the shared model
        self.adapters = [a.name for a in target.adapters]
        self.primary = target.primary

    @classmethod
    def load(cls, target: ChatTarget, progress: ProgressCallback | None = None) -> ChatModel:
        stages = ["tokenizer", f"base model {Path(target.base_model).name}"]
        stages += [f"adapter {a.name}" for a in target.adapters]
        total = len(stages)

        def stage(index: int) -> None:
            if progress is not None:
                progress(stages[index], index + 1, total)

        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        stage(0)
        device = pick_device(target.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                target.tokenizer_source, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ChatError(
                f"cannot load the tokenizer from {target.tokenizer_source}: {exc}".splitlines()[0],
                "check that the run's final/ (or the base model) holds tokenizer files",
            ) from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        stage(1)
        model = _load_base(target, device)
        if target.adapters:
            from peft import PeftModel

            first, *others = target.adapters
            stage(2)
            model = PeftModel.from_pretrained(model, str(first.path), adapter_name=first.name)
            for index, adapter in enumerate(others, start=3):
                stage(index)
                model.load_adapter(str(adapter.path), adapter_name=adapter.name)
            model.set_adapter(first.name, inference_mode=True)
            model.eval()
        return cls(model, tokenizer, target, device)

    # -- variants --------------------------------------------------------------------------------
    def variants(self) -> list[str]:
        """What can answer: `base` and every loaded adapter, or the plain model."""
        return [BASE, *self.adapters] if self.adapters else [self.primary]

    def use(self, variant: str) -> None:
        """Make a checkpoint of the run answerable, loaded as one more adapter on the base."""
        if variant in self.variants():
            return
        run = self.target.run
        if run is None or not self.adapters:
            raise ChatError(f"{variant!r} cannot be loaded here", "choose one of the loaded ones")
        ref = resolve_checkpoint(run, variant)
        if not (ref.path / "adapter_config.json").is_file():
            raise ChatError(f"{ref.name} of {run.run_id} holds no adapter", "pick another one")
        with self.lock:
            self.model.load_adapter(str(ref.path), adapter_name=ref.name)
            self.model.set_adapter(self.primary, inference_mode=True)
        self.adapters.append(ref.name)

    # -- prompts ---------------------------------------------------------------------------------
    def context_limit(self) -> int | None:
        config = getattr(self.model, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    def render(self, messages: list[Message]) -> Any:
        """Token ids (a BatchEncoding) of the conversation with the generation prompt."""
        template = None
        if not getattr(self.tokenizer, "chat_template", None):
            from engine.data import FALLBACK_CHAT_TEMPLATE

            template = FALLBACK_CHAT_TEMPLATE  # what the trainer used for this tokenizer

        def apply(msgs: list[Message]) -> Any:
            return self.tokenizer.apply_chat_template(
                msgs, chat_template=template, add_generation_prompt=True,
                return_tensors="pt", return_dict=True,
            )  # fmt: skip

        try:
            return apply(messages)
        except Exception as exc:  # some templates refuse a system turn: fold it into the user's
            if not messages or messages[0]["role"] != "system" or len(messages) < 2:
                raise ChatError(
                    f"the chat template failed: {exc}", "check the run's tokenizer"
                ) from exc
            system, first, *rest = messages
            merged = {
                "role": first["role"],
                "content": f"{system['content']}\n\n{first['content']}",
            }
            return apply([merged, *rest])

    def encode(self, messages: list[Message], max_new_tokens: int) -> Any:
        """`render`, dropping the oldest exchanges while prompt + answer exceed the context."""
        limit = self.context_limit()
        current: list[Message] | None = messages
        while current is not None:
            encoded = self.render(current)
            length = int(encoded["input_ids"].shape[-1])
            if limit is None or length + max_new_tokens <= limit:
                return encoded
            current = drop_oldest_turn(current)
        raise ChatError(
            f"the prompt is {length} tokens; with max_new_tokens={max_new_tokens} it exceeds "
            f"the model's context of {limit}",
            "shorten the prompt or lower max new tokens",
        )

    # -- answers ---------------------------------------------------------------------------------
    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        variant: str | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Start an answer. Read it by iterating, or (`on_text`) have each piece of text
        handed over in the generating thread itself, then `wait()`."""
        variant = variant or self.primary
        if variant not in self.variants():
            raise ChatError(f"{variant!r} is not loaded", "one of: " + ", ".join(self.variants()))
        settings.validate()
        inputs = self.encode(messages, settings.max_new_tokens)
        return Generation(self, inputs, settings, variant, on_text).start()

    def answer(
        self, messages: list[Message], settings: GenerationSettings, variant: str | None = None
    ) -> tuple[str, AnswerStats]:
        generation = self.stream(messages, settings, variant)
        text = "".join(generation)
        assert generation.stats is not None
        return text.strip(), generation.stats

    def generate_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": not settings.greedy,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if not settings.greedy:
            kwargs |= {"temperature": settings.temperature, "top_p": settings.top_p}
        if settings.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = settings.repetition_penalty
        if settings.ignore_eos:
            kwargs["min_new_tokens"] = settings.max_new_tokens
        if not getattr(self.tokenizer, "chat_template", None):  # fallback "### User:" format
            kwargs |= {"stop_strings": ["### User:"], "tokenizer": self.tokenizer}
        return kwargs

    def close(self) -> None:
        """Free the weights (and the GPU memory they held)."""
        self.model = None
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@lru_cache(maxsize=1)
def _streaming_classes() -> tuple[type, type]:
    """(a TextIteratorStreamer that counts and times tokens, a stop-on-Event criterion)."""
    import torch
    from transformers import StoppingCriteria, TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):  # type: ignore[misc]
        def __init__(self, tokenizer: Any) -> None:
            super().__init__(tokenizer, skip_prompt=True, timeout=POLL_S, skip_special_tokens=True)
            self.new_tokens = 0
            self.on_text: Callable[[str], None] | None = None
            self.first_token_at: float | None = None
            self.last_token_at: float | None = None

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                now = time.perf_counter()
                self.new_tokens += int(value.numel())
                self.first_token_at = self.first_token_at or now
                self.last_token_at = now
            super().put(value)  # type: ignore[no-untyped-call]

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if self.on_text is None:
                super().on_finalized_text(text, stream_end)
            elif text:
                self.on_text(text)

    class StopOnEvent(StoppingCriteria):  # type: ignore[misc]
        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                device=input_ids.device,
            )  # fmt: skip

    return CountingStreamer, StopOnEvent


class Generation:
    """One streamed answer. Iterate once for its text; `stop()` ends it within a token or two;
    `stats` once it ended. An error inside generate is raised to the reader as a ChatError."""

    def __init__(
        self,
        chat: ChatModel,
        inputs: Any,
        settings: GenerationSettings,
        variant: str,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        streamer_class, stop_class = _streaming_classes()
        self.chat = chat
        self.inputs = inputs
        self.settings = settings
        self.variant = variant
        self.stop_event = threading.Event()
        self.streamer = streamer_class(chat.tokenizer)
        if on_text is not None:  # no hand-over to a reading thread for every token

            def deliver(text: str) -> None:
                self.chunks.append(text)
                on_text(text)

            self.streamer.on_text = deliver
        self._criterion = stop_class(self.stop_event)
        self._thread = threading.Thread(target=self._generate, name="ftui-generate", daemon=True)
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at: float | None = None
        self.chunks: list[str] = []
        self._stats: AnswerStats | None = None

    def start(self) -> Generation:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def _generate(self) -> None:
        import torch
        from transformers import StoppingCriteriaList

        chat = self.chat
        try:
            with chat.lock:
                self.started_at = time.perf_counter()
                model = chat.model
                if model is None:
                    raise ChatError("the model was closed", "reopen the chat")
                scope: Any = contextlib.nullcontext()
                if self.variant == BASE:
                    scope = model.disable_adapter()
                elif chat.adapters:
                    model.set_adapter(self.variant, inference_mode=True)
                if self.settings.seed is not None:
                    torch.manual_seed(self.settings.seed)
                inputs = self.inputs.to(model.device)
                with scope, torch.inference_mode():
                    model.generate(
                        **inputs,
                        **chat.generate_kwargs(self.settings),
                        streamer=self.streamer,
                        stopping_criteria=StoppingCriteriaList([self._criterion]),
                    )
        except BaseException as exc:  # reaches the reader, which re-raises it
            self.error = exc
            self.streamer.end()
        finally:
            self.finished_at = time.perf_counter()

    def __iter__(self) -> Iterator[str]:
        pending: queue.Queue[Any] = self.streamer.text_queue
        stop_signal = self.streamer.stop_signal
        while True:
            try:
                chunk = pending.get(timeout=POLL_S)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                try:  # generate ended between the timeout and the check: drain
                    chunk = pending.get_nowait()
                except queue.Empty:
                    break
            if chunk is stop_signal:
                break
            if chunk:
                self.chunks.append(chunk)
                yield chunk
        self._thread.join()
        if self.error is not None:
            raise _as_chat_error(self.error)

    def wait(self) -> AnswerStats:
        """Block until the answer ended (with `on_text`); raise its error if it failed."""
        self._thread.join()
        if self.error is not None:
            raise _as_chat_error(self.error)
        assert self.stats is not None
        return self.stats

    @property
    def stats(self) -> AnswerStats | None:
        if self._stats is None and self.finished_at is not None and not self._thread.is_alive():
            s = self.streamer
            first, last = s.first_token_at, s.last_token_at
            ttft = first - self.started_at if first is not None else None
            rate = None
            if s.new_tokens > 1 and first is not None and last is not None and last > first:
                rate = (s.new_tokens - 1) / (last - first)
            if self.stop_event.is_set():
                reason = "stopped"
            elif s.new_tokens >= self.settings.max_new_tokens:
                reason = "length"
            else:
                reason = "eos"
            self._stats = AnswerStats(s.new_tokens, ttft, rate,
                                      self.finished_at - self.started_at, reason)  # fmt: skip
        return self._stats


def _as_chat_error(error: BaseException, doing: str = "generation") -> ChatError:
    if isinstance(error, ChatError):
        return error
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    if "out of memory" in text.lower():
        return ChatError(
            f"the answer ran out of memory ({text})",
            "lower max new tokens, or free GPU memory (is a run training?)",
        )
    return ChatError(f"{doing} failed: {text}", "see the message; try other settings")


# -- history: chats/<session>.jsonl in the run directory ------------------------------------------


def chats_dir(run: RunDir | None) -> Path:
    if run is not None:
        return run.path / "chats"
    from engine.paths import ftui_home

    return ftui_home() / "chats"


class ChatLog:
    """One chat session as JSONL: a `session` header, then one `turn` per answer. The file is
    created with the first answer, so opening and closing a chat leaves nothing behind."""

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.session_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self.path = directory / f"{self.session_id}.jsonl"
        self.header = {"type": "session", "session": self.session_id, "t": time.time(), **header}
        self.turns = 0

    def record(
        self,
        *,
        exchange: int,
        column: int,
        variant: str,
        prompt: str,
        answer: str,
        system: str,
        settings: GenerationSettings,
        stats: AnswerStats | None,
        error: str | None = None,
    ) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, self.header)
        record = {
            "type": "turn", "t": time.time(), "exchange": exchange, "column": column,
            "variant": variant, "system": system, "prompt": prompt, "answer": answer.strip(),
            "settings": settings.to_dict(), "stats": stats.to_dict() if stats else None,
        }  # fmt: skip
        if error:
            record["error"] = error
        append_jsonl(self.path, record)
        self.turns += 1

    def write_transcript(self) -> Path:
        """The session as Markdown next to its JSONL; returns its path."""
        if not self.path.exists():
            raise ChatError("nothing to export yet", "ask something first")
        out = self.path.with_suffix(".md")
        out.write_text(transcript_markdown(read_chat(self.path)), encoding="utf-8")
        return out


def read_chat(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial last line
        if isinstance(record, dict):
            records.append(record)
    return records


def transcript_markdown(records: list[dict[str, Any]]) -> str:
    header = next((r for r in records if r.get("type") == "session"), {})
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(header.get("t", time.time())))
    lines = [f"# Chat with {header.get('label', 'a model')}", ""]
    lines += [f"- session {header.get('session', '?')}, started {when}"]
    if header.get("base_model"):
        lines.append(f"- base model: `{header['base_model']}`")
    lines.append("")
    system = None
    exchange = None
    for record in records:
        if record.get("type") != "turn":
            continue
        if record.get("system") and record["system"] != system:
            system = record["system"]
            lines += ["> **System:** " + system.replace("\n", "\n> "), ""]
        if record.get("exchange") != exchange:
            exchange = record.get("exchange")
            lines += [f"## {record['prompt'].splitlines()[0][:80] if record['prompt'] else '…'}",
                      "", "**You:**", "", record["prompt"], ""]  # fmt: skip
        lines += [f"**{record['variant']}:**", "", record["answer"] or "_(no text)_", ""]
        stats = record.get("stats")
        if stats:
            lines += [f"_{AnswerStats(**_stat_fields(stats)).summary()}_", ""]
        if record.get("error"):
            lines += [f"_error: {record['error']}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def _stat_fields(stats: dict[str, Any]) -> dict[str, Any]:
    names = ("tokens", "ttft_s", "tokens_per_s", "total_s", "finish_reason")
    return {name: stats.get(name) for name in names}


def session_header(target: ChatTarget) -> dict[str, Any]:
    return {
        "label": target.label,
        "run_id": target.run.run_id if target.run else None,
        "base_model": target.base_model,
        "adapters": {a.name: str(a.path) for a in target.adapters},
        "compare": target.compare,
    }


# -- the chat worker: the model in a process of its own -------------------------------------------
#
# A terminal UI and `generate` share one interpreter's GIL: every screen refresh (tens of
# milliseconds of Python) is time the generation thread waits, which halves the speed of a
# small model. The chat screen therefore runs the model in a worker process
# (`python -m engine.chat --worker`), speaking JSON lines: requests on its stdin, events on its
# stdout. The worker exits when its stdin closes, so it never outlives the app, and the GPU
# memory it held is freed with it.


def target_to_dict(target: ChatTarget) -> dict[str, Any]:
    return {
        "base_model": target.base_model,
        "adapters": [[a.name, str(a.path)] for a in target.adapters],
        "tokenizer_source": target.tokenizer_source,
        "label": target.label,
        "method": target.method,
        "dtype": target.dtype,
        "device": target.device,
        "run": str(target.run.path) if target.run else None,
        "compare": target.compare,
    }


def target_from_dict(data: dict[str, Any]) -> ChatTarget:
    return ChatTarget(
        base_model=data["base_model"],
        adapters=tuple(AdapterRef(name, Path(path)) for name, path in data["adapters"]),
        tokenizer_source=data["tokenizer_source"],
        label=data["label"],
        method=data["method"],
        dtype=data["dtype"],
        device=data["device"],
        run=RunDir(Path(data["run"])) if data["run"] else None,
        compare=data["compare"],
    )


def serve_worker(requests: Any, events: Any) -> int:
    """The worker's loop: load, use, stream, stop, close. Answers write their text from the
    generating thread; this loop keeps reading, so a `stop` is handled while one streams."""
    write_lock = threading.Lock()

    def emit(**event: Any) -> None:
        with write_lock:
            events.write(json.dumps(event) + "\n")
            events.flush()

    def error(request_id: Any, failure: BaseException, doing: str = "generation") -> None:
        if not isinstance(failure, FtuiError):
            failure = _as_chat_error(failure, doing)
        emit(event="error", id=request_id, message=failure.message, fix=failure.fix)

    def progress(request_id: Any) -> ProgressCallback:
        return lambda stage, i, n: emit(event="progress", id=request_id, stage=stage, i=i, n=n)

    def chunks(request_id: Any) -> Callable[[str], None]:
        return lambda text: emit(event="chunk", id=request_id, text=text)

    def finish(request_id: Any, generation: Generation) -> None:
        try:
            emit(event="end", id=request_id, stats=asdict(generation.wait()))
        except BaseException as failure:
            error(request_id, failure)
        finally:
            answers.pop(request_id, None)

    model: ChatModel | None = None
    answers: dict[Any, Generation] = {}
    for line in requests:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        op, request_id = request.get("op"), request.get("id")
        try:
            if op == "load":
                model = ChatModel.load(target_from_dict(request["target"]), progress(request_id))
                emit(event="reply", id=request_id, device=model.device, variants=model.variants())
            elif op == "close":
                break
            elif model is None:
                raise ChatError("the chat worker has no model yet", "send load first")
            elif op == "use":
                model.use(request["variant"])
                emit(event="reply", id=request_id, variants=model.variants())
            elif op == "stream":
                settings = GenerationSettings(**request["settings"])
                generation = model.stream(
                    request["messages"], settings, request["variant"], on_text=chunks(request_id)
                )
                answers[request_id] = generation
                threading.Thread(target=finish, args=(request_id, generation), daemon=True).start()
            elif op == "stop" and request.get("answer") in answers:
                answers.pop(request["answer"]).stop()
        except BaseException as failure:
            error(request_id, failure, "generation" if op == "stream" else f"chat worker {op}")
    for generation in list(answers.values()):
        generation.stop()
    return 0


class WorkerAnswer:
    """An answer streamed by the worker process (the same contract as `Generation`)."""

    def __init__(self, worker: ChatWorker, answer_id: int) -> None:
        self.worker = worker
        self.id = answer_id
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.chunks: list[str] = []
        self._stats: AnswerStats | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                event = self.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.worker.alive():
                    raise self.worker.died() from None
                continue
            kind = event["event"]
            if kind == "chunk":
                self.chunks.append(event["text"])
                yield event["text"]
            elif kind == "end":
                self._stats = AnswerStats(**event["stats"]) if event["stats"] else None
                return
            elif kind == "error":
                raise ChatError(event["message"], event.get("fix"))

    def stop(self) -> None:
        self.worker.send(op="stop", answer=self.id)

    @property
    def stats(self) -> AnswerStats | None:
        return self._stats

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class ChatWorker:
    """A `ChatEngine` whose model lives in a worker process (see `serve_worker`)."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.device = "?"
        self._variants: list[str] = []
        self._ids = iter(range(1, 1 << 62))
        self._routes: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._stderr: list[str] = []
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @classmethod
    def start(cls, target: ChatTarget, progress: ProgressCallback | None = None) -> ChatWorker:
        import os
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.chat", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env, close_fds=True,
        )  # fmt: skip
        worker = cls(process)
        try:
            reply = worker.request(progress, op="load", target=target_to_dict(target))
        except BaseException:
            worker.close()
            raise
        worker.device, worker._variants = reply["device"], list(reply["variants"])
        return worker

    # -- plumbing --------------------------------------------------------------------------------
    def alive(self) -> bool:
        return bool(self.process.poll() is None)

    def died(self) -> ChatError:
        tail = " | ".join(line.strip() for line in self._stderr[-3:] if line.strip())
        return ChatError(
            f"the chat worker stopped (exit code {self.process.poll()})"
            + (f": {tail}" if tail else ""),
            "reopen the chat; if it keeps failing, try `ftui chat RUN --prompt hi`",
        )

    def send(self, **request: Any) -> None:
        with self._send_lock:
            if not self.alive():
                return
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def _read_events(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printed to stdout
            route = self._routes.get(event.get("id"))
            if route is not None:
                route.put(event)
                if event["event"] in ("end", "error", "reply"):
                    self._routes.pop(event["id"], None)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr = [*self._stderr[-49:], line]

    def request(self, progress: ProgressCallback | None = None, **request: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (load, use), forwarding progress events."""
        request_id = next(self._ids)
        route: queue.Queue[dict[str, Any]] = queue.Queue()
        self._routes[request_id] = route
        self.send(id=request_id, **request)
        while True:
            try:
                event = route.get(timeout=POLL_S * 4)
            except queue.Empty:
                if not self.alive():
                    raise self.died() from None
                continue
            if event["event"] == "progress" and progress is not None:
                progress(event["stage"], event["i"], event["n"])
            elif event["event"] == "error":
                raise ChatError(event["message"], event.get("fix"))
            elif event["event"] == "reply":
                return event

    # -- ChatEngine ------------------------------------------------------------------------------
    def variants(self) -> list[str]:
        return list(self._variants)

    def use(self, variant: str) -> None:
        if variant not in self._variants:
            self._variants = list(self.request(op="use", variant=variant)["variants"])

    def stream(
        self, messages: list[Message], settings: GenerationSettings, variant: str
    ) -> WorkerAnswer:
        settings.validate()
        answer = WorkerAnswer(self, next(self._ids))
        self._routes[answer.id] = answer.events
        self.send(op="stream", id=answer.id, messages=messages, settings=settings.to_dict(),
                  variant=variant)  # fmt: skip
        return answer

    def close(self) -> None:
        import subprocess

        self.send(op="close")
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["--worker"]:
        sys.stderr.write("usage: python -m engine.chat --worker (started by the chat screen)\n")
        return 2
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    events = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the event stream
    return serve_worker(sys.stdin, events)


if __name__ == "__main__":
    raise SystemExit(_main())
