"""What `--json` commands print: the JSON document on stdout and nothing else.

Libraries print to stdout on their own (DeepSpeed names its accelerator when it is imported,
progress bars, warnings). While a `--json` command runs, stdout, the Python object and file
descriptor 1 alike, points at stderr, so anything a library prints lands there; the command
hands its document to `emit_json`, which writes it to the real stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_json_stream: TextIO | None = None


@contextmanager
def json_mode(active: bool) -> Iterator[None]:
    """Send library output to stderr while a `--json` command runs (a no-op when not active)."""
    global _json_stream
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        real_fd = os.dup(1)
    except OSError:  # no usable descriptor 1: nothing to protect
        yield
        return
    real = open(real_fd, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 (closed below)
    saved = sys.stdout
    os.dup2(2, 1)
    sys.stdout, _json_stream = sys.stderr, real
    try:
        yield
    finally:
        sys.stderr.flush()
        real.flush()
        os.dup2(real_fd, 1)
        sys.stdout, _json_stream = saved, None
        real.close()


def emit_json(data: Any, **dumps: Any) -> None:
    """Write one JSON document (indented unless told otherwise) to the real stdout."""
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(data, **{"indent": 2, **dumps}) + "\n")
    stream.flush()
