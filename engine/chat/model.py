"""The model side of the chat: a base with its adapters loaded once, prompts through the run's
chat template, and answers streamed from `generate` in a thread (`Generation`), stoppable."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.chat.core import (
    BASE,
    POLL_S,
    AnswerStats,
    ChatError,
    GenerationSettings,
    Message,
    ProgressCallback,
    drop_oldest_turn,
)
from engine.chat.targets import ChatTarget, resolve_checkpoint


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ChatError("--device cuda, but torch sees no GPU", "use --device cpu or auto")
    if requested in ("cuda", "cpu"):
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


# Base models loaded by this process: one per chat, however many adapters sit on it.
BASE_LOADS = {"count": 0}


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
    BASE_LOADS["count"] += 1
    return model


def activate(model: Any, name: str) -> None:
    """Make adapter `name` answer. PEFT's adaption prompt (llama-adapter) has no inference mode
    flag; the chat runs under torch.inference_mode either way."""
    if getattr(model, "peft_type", None) == "ADAPTION_PROMPT":
        model.set_adapter(name)
    else:
        model.set_adapter(name, inference_mode=True)


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
            activate(model, first.name)
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
            activate(self.model, self.primary)
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
        on_end: Callable[[], None] | None = None,
    ) -> Generation:
        """Start an answer. Read it by iterating, or (`on_text`) have each piece of text
        handed over in the generating thread itself, then `wait()`; `on_end` is called in that
        thread once generate returned or failed."""
        variant = variant or self.primary
        if variant not in self.variants():
            raise ChatError(f"{variant!r} is not loaded", "one of: " + ", ".join(self.variants()))
        settings.validate()
        inputs = self.encode(messages, settings.max_new_tokens)
        return Generation(self, inputs, settings, variant, on_text, on_end).start()

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
    """(a streamer that hands on each token's text and counts and times tokens, a stop-on-Event
    criterion)."""
    import torch
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class TokenStreamer(BaseStreamer):  # type: ignore[misc]
        """The text of every new token as soon as it is final. transformers' TextStreamer
        decodes the whole line again for each token and holds text back until a space, so an
        answer without spaces (code, a long number, "……") arrived all at the end. This one
        decodes a window of the last tokens (the one before gives the spacing) and hands on
        the difference; a token that ends inside a UTF-8 character waits for the rest of it.
        Text goes to `on_text` in the generating thread, or to `text_queue` for a reader."""

        stop_signal = None

        def __init__(self, tokenizer: Any) -> None:
            self.tokenizer = tokenizer
            self.text_queue: queue.Queue[str | None] = queue.Queue()
            self.on_text: Callable[[str], None] | None = None
            self.prompt_skipped = False
            self.ids: list[int] = []
            self.window_start = 0  # decoded from here; text up to `shown` was handed on
            self.shown = 0
            self.new_tokens = 0
            self.first_token_at: float | None = None
            self.last_token_at: float | None = None

        def _decode(self, ids: list[int]) -> str:
            text: str = self.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            return text

        def _deliver(self, text: str) -> None:
            if self.on_text is not None:
                self.on_text(text)
            else:
                self.text_queue.put(text)

        def put(self, value: Any) -> None:
            if not self.prompt_skipped:  # generate hands over the prompt first
                self.prompt_skipped = True
                return
            if value.dim() > 1:
                value = value[0]
            now = time.perf_counter()
            ids = value.tolist()
            self.new_tokens += len(ids)
            self.first_token_at = self.first_token_at or now
            self.last_token_at = now
            self.ids.extend(ids)
            self._hand_on(final=False)

        def end(self) -> None:
            self._hand_on(final=True)
            self.text_queue.put(self.stop_signal)

        def _hand_on(self, final: bool) -> None:
            """Deliver the text the tokens since `shown` add (held while it ends inside a
            character, unless this is the end)."""
            before = self._decode(self.ids[self.window_start : self.shown])
            after = self._decode(self.ids[self.window_start :])
            if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
                return
            self.window_start, self.shown = self.shown, len(self.ids)
            self._deliver(after[len(before) :])

    class StopOnEvent(StoppingCriteria):  # type: ignore[misc]
        """Done once the event is set. Called every step: it answers with one of two tensors
        made once (generate combines them out of place), not a new tensor per token."""

        def __init__(self, event: threading.Event) -> None:
            self.event = event
            self._answers: dict[tuple[int, Any], tuple[Any, Any]] = {}

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            key = (input_ids.shape[0], input_ids.device)
            if key not in self._answers:
                self._answers[key] = (
                    torch.zeros(key[0], dtype=torch.bool, device=key[1]),
                    torch.ones(key[0], dtype=torch.bool, device=key[1]),
                )
            return self._answers[key][self.event.is_set()]

    return TokenStreamer, StopOnEvent


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
        on_end: Callable[[], None] | None = None,
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
        self.on_end = on_end
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
                    activate(model, self.variant)
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
            if self.on_end is not None:
                self.on_end()

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
            raise as_chat_error(self.error)

    def wait(self) -> AnswerStats:
        """Block until the answer ended (with `on_text`); raise its error if it failed."""
        self._thread.join()
        if self.error is not None:
            raise as_chat_error(self.error)
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


def as_chat_error(error: BaseException, doing: str = "generation") -> ChatError:
    if isinstance(error, ChatError):
        return error
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    if "out of memory" in text.lower():
        return ChatError(
            f"the answer ran out of memory ({text})",
            "lower max new tokens, or free GPU memory (is a run training?)",
        )
    return ChatError(f"{doing} failed: {text}", "see the message; try other settings")
