"""The server process: load the run's model once, serve it with uvicorn, keep serve/server.json
current. `ftui serve` runs `serve()` in its own process, or with --detach starts
`python -m engine.serve.server --run-dir D ...` in a session of its own (the key, if any, in
the environment: never on a command line other users can read)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.run.rundir import RunDir
from engine.serve.options import KEY_ENV, ServeOptions
from engine.serve.state import ServeDir

GRACEFUL_S = 5  # on stop, open answers get this long before they are cut


def load_models(run: RunDir, options: ServeOptions, progress: Any = None) -> Any:
    """The run's base model once, its default checkpoint on it (others load on first use)."""
    from engine.chat import ChatModel, run_target
    from engine.serve.answers import ServedModels

    target = run_target(run, options.checkpoint, None, options.device)
    return ServedModels(ChatModel.load(target, progress=progress), target)


def quiet_libraries() -> None:
    """Library chatter (progress bars, optional-kernel warnings) would fill the log."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def serve(
    run: RunDir,
    options: ServeOptions,
    *,
    detached: bool = False,
    say: Callable[[str], None] | None = None,
    progress: Any = None,
) -> int:
    """Serve until SIGINT/SIGTERM; 0 when it stopped, 1 when it could not start."""
    import uvicorn

    from engine.run.processes import create_time
    from engine.serve.app import create_app

    tell = say or (lambda line: print(line, file=sys.stderr, flush=True))
    record = ServeDir(run)
    if not detached:  # a detached server's record was started by `ftui serve`
        record.start_record(engine="ftui", host=options.host, port=options.port,
                            url=options.url, api_key=options.api_key is not None,
                            detached=False)  # fmt: skip
    record.write(status="loading", pid=os.getpid(), create_time=create_time(os.getpid()))
    quiet_libraries()
    try:
        models = load_models(run, options, progress)
    except BaseException as exc:
        record.write(status="failed", error=str(exc).splitlines()[0][:300], stopped_at=time.time())
        raise
    app = create_app(models, record, options.api_key, tell)

    def ready() -> None:
        import torch  # loaded with the model already

        record.write(status="ready", default_model=models.default, models=models.names(),
                     device=models.chat.device, torch_threads=torch.get_num_threads(),
                     ready_at=time.time())  # fmt: skip
        tell(f"serving {run.run_id} at {options.url} on {models.chat.device}; models: "
             f"{', '.join(models.names())}")  # fmt: skip

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                ready()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """SIGINT and SIGTERM shut down gracefully, and that is the end: uvicorn would
            raise the signal again afterwards, killing the process before the record says
            it stopped (and exiting 130 on Ctrl-C)."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                            access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_S)  # fmt: skip
    server = Server(config)
    try:
        server.run()
    finally:
        status = "stopped" if server.started else "failed"
        fields: dict[str, Any] = {"status": status, "stopped_at": time.time()}
        if not server.started:
            fields["error"] = f"could not listen on {options.host}:{options.port}"
        record.write(**fields)
        models.chat.close()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.serve.server")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    key = os.environ.pop(KEY_ENV, None) or None
    options = ServeOptions(args.host, args.port, args.checkpoint, key, "ftui", args.device)
    return serve(RunDir(args.run_dir), options, detached=True)


if __name__ == "__main__":
    sys.exit(main())
