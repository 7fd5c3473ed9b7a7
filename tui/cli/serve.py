"""`ftui serve` and `ftui servers`.

    ftui serve RUN [--checkpoint N] [--host H] [--port P] [--api-key K | --new-api-key]
                   [--detach] [--engine ftui|vllm [--print-command]]
    ftui servers [--json]                    every run's server: where, status, requests, speed,
                                             latency
    ftui stop RUN --server                   stops one (see tui/cli/runs.py)

Bad input (an unknown run, no adapter yet, a network bind without a key, a port in use, vLLM
missing) is one message with its fix and exit code 2, before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from engine.errors import FtuiError
from tui.cli.output import emit_json


def add_serve_parsers(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a run's checkpoints over an OpenAI-compatible HTTP API",
        description="Serve every checkpoint of a run (and `base`) as models of an "
        "OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /health. "
        "Binds 127.0.0.1 (reach it with ssh -L 8000:127.0.0.1:8000 user@host); any other "
        "address needs a key.",
    )
    serve.add_argument("run", help="run id, unique prefix or path")
    serve.add_argument("--checkpoint", help="the default model: final (default), checkpoint-N, N")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help=f"require this key (Bearer); also read from ${_key_env()}")
    serve.add_argument(
        "--new-api-key", action="store_true", help="make a key, print it once, require it"
    )
    serve.add_argument(
        "--detach", action="store_true", help="run in the background (survives logout)"
    )
    serve.add_argument("--engine", choices=("ftui", "vllm"), default="ftui")
    serve.add_argument(
        "--print-command", action="store_true", help="with --engine vllm: print, do not run"
    )
    serve.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    serve.set_defaults(handler=cmd_serve)

    servers = sub.add_parser("servers", help="list the runs' servers: address, status, speed")
    servers.add_argument("--json", action="store_true", help="print a JSON list")
    servers.set_defaults(handler=cmd_servers)


def _key_env() -> str:
    from engine.serve.options import KEY_ENV

    return KEY_ENV


def _options(args: argparse.Namespace) -> tuple[Any, bool]:
    """(the options, whether the key was made here)."""
    from engine.serve.options import ServeOptions, new_api_key

    key = args.api_key or os.environ.get(_key_env()) or None
    made = False
    if args.new_api_key:
        if args.api_key:
            raise FtuiError("give --api-key or --new-api-key, not both", "drop one of them")
        key, made = new_api_key(), True
    if args.print_command and args.engine != "vllm":
        raise FtuiError("--print-command shows the vLLM command", "add --engine vllm")
    options = ServeOptions(args.host, args.port, args.checkpoint, key, args.engine, args.device)
    return options, made


def _progress(stage: str, index: int, total: int) -> None:
    sys.stderr.write(f"loading {stage} ({index}/{total})\n")
    sys.stderr.flush()


def _print_key(key: str) -> None:
    sys.stdout.write(
        f"API key (shown once, not stored): {key}\n"
        f"  clients send it as: Authorization: Bearer {key}\n"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.run.rundir import find_run
    from engine.serve.launch import check_can_serve

    run = find_run(args.run)
    options, made = _options(args)
    if args.print_command:
        from engine.serve.options import check_bind
        from engine.serve.vllm import vllm_command

        check_bind(options)
        sys.stdout.write(vllm_command(run, options).shell() + "\n")
        return 0
    check_can_serve(run, options)
    if options.engine == "vllm":
        return _serve_vllm(run, options, made, detach=args.detach)
    if args.detach:
        return _serve_detached(run, options, made)
    if made:
        _print_key(options.api_key)
    from engine.serve.server import serve

    sys.stdout.write(f"loading {run.run_id}; it serves at {options.url} (Ctrl-C stops it)\n")
    sys.stdout.flush()
    return serve(run, options, progress=_progress if sys.stderr.isatty() else None)


def _serve_detached(run: Any, options: Any, made: bool) -> int:
    from engine.serve.launch import start_detached, wait_ready

    pid = start_detached(run, options)
    sys.stdout.write(f"starting the server of {run.run_id} (pid {pid}): loading the model…\n")
    sys.stdout.flush()
    record = wait_ready(run)
    if record.get("status") == "ready":
        models = ", ".join(record.get("models") or [])
        sys.stdout.write(f"serving at {options.url}\n  models: {models}\n")
    else:
        sys.stdout.write(f"still loading; `ftui servers` shows when it serves at {options.url}\n")
    if made:
        _print_key(options.api_key)
    sys.stdout.write(f"  log: {record.get('log')}\n  stop it: ftui stop {run.run_id} --server\n")
    return 0


def _serve_vllm(run: Any, options: Any, made: bool, *, detach: bool) -> int:
    from engine.serve.launch import start_vllm

    if made:
        _print_key(options.api_key)
    sys.stdout.flush()
    pid = start_vllm(run, options, detach=detach)  # without --detach it does not return
    sys.stdout.write(
        f"vLLM is starting for {run.run_id} (pid {pid}) at {options.url}\n"
        f"  log: {run.path / 'serve' / 'server.log'}\n  stop it: ftui stop {run.run_id} --server\n"
    )
    return 0


def _age(t: Any) -> str:
    from engine.humanize import duration

    return duration(time.time() - float(t)) if isinstance(t, (int, float)) else "-"


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def cmd_servers(args: argparse.Namespace) -> int:
    from engine.serve.state import list_servers

    infos = list_servers()
    if args.json:
        emit_json([i.to_dict() for i in infos])
        return 0
    if not infos:
        sys.stdout.write("no servers yet: start one with `ftui serve RUN`\n")
        return 0
    columns = ("run", "status", "url", "key", "default", "requests", "tokens/s",
               "latency s p50/p95", "first token s", "up")  # fmt: skip
    rows = []
    for i in infos:
        r, s = i.record, i.stats
        engine = "" if r.get("engine", "ftui") == "ftui" else f" ({r.get('engine')})"
        rows.append((
            i.run_id, i.status + engine, str(r.get("url") or "-"),
            "yes" if r.get("api_key") else "no",
            str(r.get("default_model") or "-"),
            f"{s['requests']}" + (f" ({s['errors']} errors)" if s["errors"] else ""),
            _number(s["tokens_per_s_median"], ",.1f"),
            f"{_number(s['total_s_median'], '.3f')}/{_number(s['total_s_p95'], '.3f')}",
            _number(s["ttft_s_median"], ".3f"),
            _age(r.get("started_at")) if i.status in ("starting", "loading", "ready", "running")
            else "-",
        ))  # fmt: skip
    widths = [max(len(row[c]) for row in [columns, *rows]) for c in range(len(columns))]
    for row in [columns, *rows]:
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
    return 0
