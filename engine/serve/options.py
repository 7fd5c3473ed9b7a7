"""What `ftui serve` was asked for, checked before anything starts: the bind address and its key
rule, the port, the engine."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import socket
from dataclasses import dataclass

from engine.errors import FtuiError

KEY_ENV = "FTUI_SERVE_API_KEY"  # how a key reaches a detached server (never its argv)
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body above this is refused (413)
ENGINES = ("ftui", "vllm")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    checkpoint: str | None = None  # the default model (what the run id answers as)
    api_key: str | None = None
    engine: str = "ftui"
    device: str = "auto"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_api_key() -> str:
    return "ftui-" + secrets.token_urlsafe(24)


def check_options(options: ServeOptions) -> ServeOptions:
    """Refuse what must not start: a network bind without a key, a bad port or key, a port
    already taken."""
    check_bind(options)
    check_port_free(options.host, options.port)
    return options


def check_bind(options: ServeOptions) -> None:
    """The engine, the port number, the key, and the rule: off this machine only with a key."""
    if options.engine not in ENGINES:
        raise FtuiError(f"unknown --engine {options.engine!r}", "use --engine ftui or vllm")
    if not 1 <= options.port <= 65535:
        raise FtuiError(f"--port {options.port} is not a TCP port", "use 1-65535, e.g. 8000")
    if options.api_key is not None and (
        len(options.api_key) < 8 or any(c.isspace() for c in options.api_key)
    ):
        raise FtuiError(
            "the API key must be at least 8 characters, without spaces",
            "pass a longer key, or --new-api-key to have one made",
        )
    if not is_loopback(options.host) and not options.api_key:
        raise FtuiError(
            f"binding {options.host} would let anyone who reaches this machine use the model "
            "without a key",
            "add --api-key KEY (or --new-api-key to have one made and printed once), or keep "
            "the default 127.0.0.1 and forward the port: ssh -L 8000:127.0.0.1:8000 user@host",
        )


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # What uvicorn sets too: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            reason = "is in use" if taken else f"cannot be bound ({exc.strerror})"
            raise FtuiError(
                f"{host}:{port} {reason}",
                "pick another --port, or stop what holds it (`ftui servers` lists ftui's)",
            ) from None
        with contextlib.suppress(OSError):
            probe.close()
