"""`--notify URL`: tell a user who is not watching that a run ended, failed or stalled.

The supervisor POSTs once when the run ends (and once per stall), with a short timeout; a
webhook that is down, slow or refuses never blocks or fails the run: the outcome is an event
(`notified` or `notify_failed`) naming only the host, never the URL (webhook URLs carry
tokens). The body fits the endpoint:

- ntfy (a host with "ntfy" in its name): the summary as a plain-text body, the title in `Title`;
- Slack (hooks.slack.com): `{"text": summary}`; Discord (discord.com): `{"content": summary}`;
- anything else: JSON `{"text": summary, "run_id", "status", "summary", "failure", "step",
  "max_steps", "cost_usd"}` (`text` makes it a Slack-style message for Mattermost, Rocket.Chat,
  Google Chat and the like).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from engine.humanize import duration

TIMEOUT_SECONDS = 5.0


def redact(url: str) -> str:
    """The host only: what may go into events and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


def summary_of(run_id: str, state: dict[str, Any], cost: dict[str, Any] | None = None) -> str:
    """One line a phone can show: status, step, loss, time and money."""
    status = str(state.get("status") or "?")
    reason = state.get("failure") or state.get("stop_reason")
    head = f"{status} ({reason})" if reason and reason != "requested" else status
    parts = [f"ftui run {run_id} {head}"]
    step, max_steps = state.get("last_step", state.get("step")), state.get("max_steps")
    if isinstance(step, int):
        parts.append(f"step {step}/{max_steps}" if max_steps else f"step {step}")
    if state.get("note"):
        parts.append(str(state["note"]))
    cost = cost or {}
    if isinstance(cost.get("elapsed_s"), (int, float)):
        parts.append(f"ran {duration(cost['elapsed_s'])}")
    if isinstance(cost.get("spent_usd"), (int, float)):
        parts.append(f"cost ${cost['spent_usd']:.4g}")
    return ", ".join(parts)


def request_for(url: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers this endpoint understands."""
    host = (urlsplit(url).hostname or "").lower()
    text = str(payload["summary"])
    if "ntfy" in host:
        title = f"ftui: {payload['run_id']} {payload['status']}"
        tags = "white_check_mark" if payload["status"] == "completed" else "warning"
        return text.encode("utf-8"), {
            "Title": title.encode("ascii", "replace").decode(),
            "Tags": tags,
            "Content-Type": "text/plain; charset=utf-8",
        }
    json_headers = {"Content-Type": "application/json"}
    if host == "hooks.slack.com":
        return json.dumps({"text": text}).encode(), json_headers
    if host.endswith("discord.com") or host.endswith("discordapp.com"):
        return json.dumps({"content": text[:2000]}).encode(), json_headers
    return json.dumps({"text": text, **payload}).encode(), json_headers


def send(url: str, payload: dict[str, Any], *, timeout: float | None = None) -> str | None:
    """POST the payload; None when the endpoint took it, else why not (never raises)."""
    import urllib.error
    import urllib.request

    if timeout is None:
        timeout = float(os.environ.get("FTUI_NOTIFY_TIMEOUT", TIMEOUT_SECONDS))
    body, headers = request_for(url, payload)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except Exception as exc:  # a webhook must never take the supervisor down
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None if 200 <= status < 300 else f"HTTP {status}"


def notify_run(run: Any, kind: str, state: dict[str, Any]) -> None:
    """Tell the run's `--notify` webhook (if any) that it `kind` (ended, stalled), and record
    the outcome as an event."""
    from engine.run.cost import run_cost, tail_records
    from engine.run.rundir import read_spec

    url = (read_spec(run).get("budget") or {}).get("notify")
    if not url:
        return
    steps = [r["step"] for r in tail_records(run.metrics, 8192) if isinstance(r.get("step"), int)]
    state = {**state, "last_step": steps[-1] if steps else None}
    try:
        cost = run_cost(run, state, now=_now()).to_dict()
    except Exception:  # the money is a nicety here; the message still goes
        cost = {}
    status = "stalled" if kind == "stalled" else str(state.get("status") or "?")
    payload = {
        "run_id": run.run_id,
        "status": status,
        "summary": summary_of(run.run_id, {**state, "status": status}, cost),
        "failure": state.get("failure"),
        "stop_reason": state.get("stop_reason"),
        "step": state.get("last_step"),
        "max_steps": state.get("max_steps"),
        "cost_usd": cost.get("spent_usd"),
    }
    error = send(str(url), payload)
    if error is None:
        run.event("notified", to=redact(str(url)), status=status)
    else:
        run.event("notify_failed", to=redact(str(url)), status=status, error=error)


def _now() -> float:
    import time

    return time.time()
