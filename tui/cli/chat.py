"""`ftui chat` and `ftui export`.

    ftui chat RUN [--checkpoint N] [--compare base|CHECKPOINT]       the chat screen
    ftui chat RUN --prompt TEXT [--json] [generation flags]           one answer, no app
    ftui chat --model M [--adapter DIR] [...]                         outside a run
    ftui chat --adapters RUN[:CKPT],RUN[:CKPT] [--compare base|NAME]  several runs, one base
    ftui export RUN [--checkpoint N] --out DIR [--merge] [--force]

Bad input (an unknown run, a missing checkpoint, a run without an adapter yet) is an FtuiError:
one message with its fix, exit code 2, before anything heavy loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from tui.cli.output import emit_json


def add_chat_parsers(sub: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="chat with a run's adapter, streaming (side by side with --compare)",
        description="Open the chat screen on a run's adapter, or answer one --prompt and exit.",
    )
    chat.add_argument("run", nargs="?", help="run id, unique prefix or path")
    chat.add_argument("--checkpoint", help="final (default), checkpoint-N or N")
    chat.add_argument(
        "--compare", metavar="base|CHECKPOINT", help="answer also with the base or a checkpoint"
    )
    chat.add_argument(
        "--adapters", metavar="RUN[:CKPT],...",
        help="several runs' adapters on their one base: switch, disable (base) or compare them",
    )  # fmt: skip
    chat.add_argument("--model", help="outside a run: the base model (a directory or cached id)")
    chat.add_argument("--adapter", help="outside a run: a PEFT adapter directory")
    chat.add_argument(
        "--method", choices=("lora", "qlora"), default="lora",
        help="with --adapter: qlora loads the base in 4-bit NF4",
    )  # fmt: skip
    chat.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    chat.add_argument("--prompt", help="answer this once without the app ('-' reads stdin)")
    chat.add_argument("--json", action="store_true", help="with --prompt: print one JSON object")
    chat.add_argument("--system", default="", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 answers greedily")
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--repetition-penalty", type=float, default=1.0)
    chat.add_argument("--seed", type=int, help="sample reproducibly")
    chat.set_defaults(handler=cmd_chat)

    export = sub.add_parser(
        "export",
        help="write a run's adapter, or the base with it merged in, to a folder",
        description="Export a checkpoint's adapter (with the tokenizer and a model card), or "
        "with --merge a full model with the adapter merged into the base weights.",
    )
    export.add_argument("run", help="run id, unique prefix or path")
    export.add_argument("--checkpoint", help="final (default), checkpoint-N or N")
    export.add_argument("--out", required=True, type=Path, help="the folder to write")
    export.add_argument("--merge", action="store_true", help="merge the adapter into the base")
    export.add_argument("--force", action="store_true", help="write into a non-empty folder")
    export.add_argument("--push-to-hub", metavar="REPO",
                        help="then upload the folder to this hub repo (owner/name)")  # fmt: skip
    export.add_argument("--private", action="store_true", help="create the hub repo private")
    export.add_argument("--json", action="store_true", help="print one JSON object")
    export.set_defaults(handler=cmd_export)


def _quiet_libraries() -> None:
    """Library chatter (progress bars, optional-kernel warnings) would garble the answer."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bitsandbytes", "transformers", "peft", "DeepSpeed", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def chat_target(args: argparse.Namespace) -> Any:
    from engine.chat import adapter_target, run_target
    from engine.run.rundir import find_run

    if args.run and (args.model or args.adapter):
        raise FtuiError("give a run, or --model/--adapter, not both", "see `ftui chat -h`")
    if args.adapters:
        if args.run or args.model or args.adapter or args.checkpoint:
            raise FtuiError(
                "--adapters names the runs (RUN[:CKPT]) itself",
                "drop the run, --model, --adapter and --checkpoint beside --adapters",
            )
        from engine.chat import adapters_target

        refs = [r for r in args.adapters.split(",")]
        return adapters_target(refs, device=args.device, compare=args.compare)
    if args.run:
        return run_target(find_run(args.run), args.checkpoint, args.compare, args.device)
    if not args.model:
        raise FtuiError(
            "chat needs a run (or --model with an optional --adapter)",
            "list the runs with `ftui runs`, then `ftui chat RUN`",
        )
    if args.checkpoint:
        raise FtuiError("--checkpoint picks a checkpoint of a run", "give the run id")
    return adapter_target(
        args.model, args.adapter, method=args.method, device=args.device, compare=args.compare
    )


def _settings(args: argparse.Namespace) -> Any:
    from engine.chat import GenerationSettings

    return GenerationSettings(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    ).validate()


def cmd_chat(args: argparse.Namespace) -> int:
    target = chat_target(args)
    settings = _settings(args)
    if args.prompt is None:
        if args.json:
            raise FtuiError("--json needs --prompt", "add --prompt TEXT, or drop --json")
        return _open_app(target, settings, args.system)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise FtuiError("the prompt is empty", "pass some text with --prompt")
    return answer_once(target, settings, prompt.strip(), args.system, as_json=args.json)


def _progress(stage: str, index: int, total: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rloading {stage} ({index}/{total})…\033[K")
        sys.stderr.flush()


class _Printer:
    """Writes an answer's text as it comes (when `echo`), without the newline templates often
    start with; the generation keeps the text either way."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.started = False

    def __call__(self, text: str) -> None:
        if not self.echo:
            return
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        sys.stdout.write(text)
        sys.stdout.flush()


def answer_once(target: Any, settings: Any, prompt: str, system: str, *, as_json: bool) -> int:
    """Load, answer with the adapter (and the compared model), print, exit."""
    from engine.chat import ChatModel, Conversation
    from engine.chat.model import BASE_LOADS

    _quiet_libraries()
    model = ChatModel.load(target, progress=_progress)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    variants = [target.primary] + ([target.compare] if target.compare else [])
    if target.run is None and len(target.adapters) > 1:  # --adapters: each answers
        names = [a.name for a in target.adapters]
        variants = names + ([target.compare] if target.compare == "base" else [])
    messages = Conversation(system=system).messages(prompt)
    answers = []
    for variant in variants:
        if not as_json and len(variants) > 1:
            sys.stdout.write(f"── {variant} ──\n")
        # The text is written by the generating thread itself: a reading thread woken for
        # every token would take the interpreter lock from generate (docs/benchmarks.md, Chat).
        generation = model.stream(messages, settings, variant, on_text=_Printer(not as_json))
        stats = generation.wait()
        answers.append({"variant": variant, "answer": generation.text.strip(), **stats.to_dict()})
        if not as_json:
            sys.stdout.write("\n")
            sys.stderr.write(f"[{variant}] {stats.summary()}\n")
    if as_json:
        first = answers[0]
        out = {
            "target": target.label,
            "run_id": target.run.run_id if target.run else None,
            "base_model": target.base_model,
            "checkpoint": target.primary,
            "compare": target.compare,
            "device": model.device,
            "prompt": prompt,
            "settings": settings.to_dict(),
            "answer": first["answer"],
            "ttft_s": first["ttft_s"],
            "tokens_per_s": first["tokens_per_s"],
            "answers": answers,
            "base_loads": BASE_LOADS["count"],  # one base however many adapters
        }
        emit_json(out)
    model.close()
    return 0


def _open_app(target: Any, settings: Any, system: str) -> int:
    from textual.app import App

    from tui.app import stylesheets
    from tui.screens.chat.screen import ChatScreen

    _quiet_libraries()

    class ChatApp(App[None]):
        CSS_PATH = stylesheets("chat")
        TITLE = "ftui chat"

        def on_mount(self) -> None:
            screen = ChatScreen(target.run, target=target, settings=settings, system=system)
            self.push_screen(screen, lambda _result: self.exit())

    ChatApp().run()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.chat.export import export_run
    from engine.run.rundir import find_run

    run = find_run(args.run)
    if args.push_to_hub:
        from engine.hub.push import check_push_target

        check_push_target(args.push_to_hub)  # before the export's minutes of work
    _quiet_libraries()
    result = export_run(
        run, args.out, checkpoint=args.checkpoint, merge=args.merge, force=args.force,
        progress=None if args.json else _progress,
    )  # fmt: skip
    if sys.stderr.isatty() and not args.json:
        sys.stderr.write("\r\033[K")
    pushed = None
    if args.push_to_hub:
        from engine.chat.export import push_export

        if not args.json:
            sys.stderr.write(f"uploading {result.out_dir} to {args.push_to_hub}...\n")
        pushed = push_export(result, args.push_to_hub, private=args.private)
    if args.json:
        emit_json({**result.to_dict(), "pushed": pushed})
        return 0
    what = {"adapter": "adapter", "merged": "merged model", "full": "model"}[result.kind]
    sys.stdout.write(
        f"wrote the {what} of {run.run_id} ({result.checkpoint}) to {result.out_dir}\n"
        f"  files: {', '.join(result.files)}\n"
    )
    if pushed:
        sys.stdout.write(f"  pushed: {pushed}\n")
    return 0
