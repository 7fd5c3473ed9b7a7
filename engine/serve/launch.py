"""Starting a server: checked first (the run, the bind rule, the port, one server per run), then
in this process, or detached like a run (a session of its own: an SSH hangup never reaches
it), recorded in the run's serve/ so `ftui servers` lists it and `ftui stop` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

from engine.errors import FtuiError
from engine.paths import child_env
from engine.run.rundir import RunDir
from engine.serve.options import KEY_ENV, ServeOptions, check_options
from engine.serve.state import ServeDir, live_server, status_of

READY_WAIT_S = 300.0


class ServerFailed(FtuiError):
    """The server process ended before it served (its log says why)."""

    exit_code = 1


def check_can_serve(run: RunDir, options: ServeOptions) -> None:
    """Everything that must hold before a server starts; an FtuiError (exit 2) otherwise."""
    if options.engine == "vllm":
        from engine.serve.vllm import not_installed, vllm_command, vllm_executable

        command = vllm_command(run, options)  # what vLLM cannot serve
        if vllm_executable() is None:
            raise not_installed(command)
    else:
        from engine.chat import resolve_checkpoint

        resolve_checkpoint(run, options.checkpoint)  # no adapter yet, unknown checkpoint
        missing = [m for m in ("fastapi", "uvicorn") if not _importable(m)]
        if missing:
            raise FtuiError(
                f"serving needs {' and '.join(missing)}, which are not installed",
                "pip install 'ftui[serve]' (scripts/setup.sh installs it)",
            )
    running = live_server(run)
    if running is not None:
        raise FtuiError(
            f"run {run.run_id} is already served at {running.get('url')} "
            f"(pid {running.get('pid')})",
            f"use that one, or stop it first: ftui stop {run.run_id} --server",
        )
    check_options(options)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _env(extra: dict[str, str]) -> dict[str, str]:
    return child_env(extra)


def _start(run: RunDir, argv: list[str], env: dict[str, str], options: ServeOptions) -> int:
    from engine.run.processes import create_time

    serve = ServeDir(run)
    serve.path.mkdir(parents=True, exist_ok=True)
    with serve.log.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(serve.path),
            env=env,
            start_new_session=True,  # its own session: no terminal, no SIGHUP from SSH
            close_fds=True,
        )
    threading.Thread(target=proc.wait, daemon=True).start()  # never a zombie of a long-lived caller
    serve.start_record(
        status="starting" if options.engine == "ftui" else "running",
        engine=options.engine, pid=proc.pid, create_time=create_time(proc.pid),
        host=options.host, port=options.port, url=options.url,
        api_key=options.api_key is not None, detached=True, log=str(serve.log),
        default_model=options.checkpoint,
    )  # fmt: skip
    return proc.pid


def start_detached(run: RunDir, options: ServeOptions) -> int:
    """Start ftui's server for `run` in the background; its pid."""
    argv = [sys.executable, "-m", "engine.serve.server", "--run-dir", str(run.path),
            "--host", options.host, "--port", str(options.port),
            "--device", options.device]  # fmt: skip
    if options.checkpoint:
        argv += ["--checkpoint", options.checkpoint]
    extra = {KEY_ENV: options.api_key} if options.api_key else {}
    return _start(run, argv, _env(extra), options)


def wait_ready(run: RunDir, timeout: float = READY_WAIT_S) -> dict[str, Any]:
    """The record once the detached server listens; ServerFailed with its log's end when it
    ended first; the record as it is (still loading) after `timeout`."""
    serve = ServeDir(run)
    deadline = time.monotonic() + timeout
    while True:
        record = serve.read()
        status = status_of(record)
        if status == "ready":
            return record
        if status in ("failed", "stopped", "dead"):
            raise ServerFailed(
                f"the server of {run.run_id} did not start:\n" + log_tail(serve),
                f"see {serve.log}",
            )
        if time.monotonic() >= deadline:
            return record
        time.sleep(0.2)


def log_tail(serve: ServeDir, lines: int = 12) -> str:
    try:
        text = serve.log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "  (no log)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"  | {line}" for line in kept)


def start_vllm(run: RunDir, options: ServeOptions, *, detach: bool) -> int:
    """Run the vLLM command (exec'd in this process, or detached); returns the detached pid."""
    from engine.serve.vllm import not_installed, vllm_command, vllm_executable

    command = vllm_command(run, options)
    executable = vllm_executable()
    if executable is None:
        raise not_installed(command)
    if command.template_path is not None and command.chat_template is not None:
        command.template_path.parent.mkdir(parents=True, exist_ok=True)
        command.template_path.write_text(command.chat_template, encoding="utf-8")
    argv = [executable, *command.argv[1:]]
    if detach:
        return _start(run, argv, _env(command.env), options)
    serve = ServeDir(run)
    serve.start_record(status="running", engine="vllm", pid=os.getpid(), host=options.host,
                       port=options.port, url=options.url, api_key=options.api_key is not None,
                       detached=False)  # fmt: skip
    from engine.run.processes import create_time

    serve.write(create_time=create_time(os.getpid()))
    os.execve(executable, argv, {**os.environ, **command.env})  # the same pid: the record holds
