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
- Generation runs `model.generate` in a thread feeding a streamer; a stopping criterion watches
  a per-answer `threading.Event`, and the reader polls with a timeout, so an exception inside
  `generate` reaches the reader instead of blocking it forever. One lock serialises answers on
  the shared model: the next answer starts after the previous one ended.
- `ChatWorker` is the same engine in a process of its own (`python -m engine.chat.worker`,
  JSON lines over pipes): what the chat screen uses, so rendering never slows generation.
- `ChatLog` keeps each chat session as JSONL in the run's `chats/`, and writes its transcript.

Modules: `core` (settings, measurements, conversations, the engine protocol), `targets` (what
to load), `model` (loading and generation), `history`, `worker`. This package re-exports their
public names. Headless and cheap to import: torch, transformers and peft load inside functions.
"""

from engine.chat.core import (
    BASE,
    FINAL,
    POLL_S,
    AnswerStats,
    AnswerStream,
    ChatEngine,
    ChatError,
    Conversation,
    GenerationSettings,
    Message,
    ProgressCallback,
    drop_oldest_turn,
)
from engine.chat.history import (
    ChatLog,
    chats_dir,
    read_chat,
    session_header,
    transcript_markdown,
)
from engine.chat.model import ChatModel, Generation, as_chat_error, pick_device
from engine.chat.targets import (
    AdapterRef,
    ChatTarget,
    adapter_target,
    adapters_target,
    resolve_base_model,
    resolve_checkpoint,
    run_base_model,
    run_checkpoints,
    run_target,
    target_from_dict,
    target_to_dict,
)
from engine.chat.worker import ChatWorker, WorkerAnswer, serve_worker
from engine.run.rundir import read_spec

__all__ = [
    "BASE",
    "FINAL",
    "POLL_S",
    "AdapterRef",
    "AnswerStats",
    "AnswerStream",
    "ChatEngine",
    "ChatError",
    "ChatLog",
    "ChatModel",
    "ChatTarget",
    "ChatWorker",
    "Conversation",
    "Generation",
    "GenerationSettings",
    "Message",
    "ProgressCallback",
    "WorkerAnswer",
    "adapter_target",
    "adapters_target",
    "as_chat_error",
    "chats_dir",
    "drop_oldest_turn",
    "pick_device",
    "read_chat",
    "read_spec",
    "resolve_base_model",
    "resolve_checkpoint",
    "run_base_model",
    "run_checkpoints",
    "run_target",
    "serve_worker",
    "session_header",
    "target_from_dict",
    "target_to_dict",
    "transcript_markdown",
]
