"""Serve a run's model over an OpenAI-compatible HTTP API (`ftui serve`).

- One base model in memory (`engine.chat.ChatModel`, the chat's loader); every checkpoint of
  the run is a model name (`final`, `checkpoint-80`, and the run id for the default one) and
  so is `base` (the adapters disabled). Answers are `engine.chat.Generation`s: each takes the
  model's lock for the whole of `generate`, adapter selection included, so requests queue and
  never mix adapters, while the event loop stays free for `/v1/models` and `/health`.
- Safe by default: 127.0.0.1; any other address only with a key, which every request carries.
- State in the run's folder: `serve/server.json`, `serve/requests.jsonl`, `serve/server.log`.
- `--engine vllm` builds the equivalent `vllm serve` command.

Modules: `options` (what was asked, the bind rule), `state` (the serve/ folder, listing,
stopping), `launch` (checks, detached start), `protocol` (the OpenAI wire format), `answers`
(the model side), `app` (FastAPI routes), `server` (the server process), `vllm`. Light to import
here: FastAPI and uvicorn load in the server process, torch inside the chat model.
"""

from engine.serve.options import ServeOptions, check_options, is_loopback, new_api_key
from engine.serve.state import (
    ServeDir,
    ServerInfo,
    list_servers,
    live_server,
    server_info,
    stop_server,
)

__all__ = [
    "ServeDir",
    "ServeOptions",
    "ServerInfo",
    "check_options",
    "is_loopback",
    "list_servers",
    "live_server",
    "new_api_key",
    "server_info",
    "stop_server",
]
