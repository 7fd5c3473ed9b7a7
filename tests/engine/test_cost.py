"""Prices, costs and notifications without a training run: the price a launch picks, the wall
time a run is billed for across attempts, the webhook's body per endpoint and its failures (a
real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.errors import FtuiError
from engine.run.cost import BudgetWatch, resolve_price, run_seconds
from engine.run.notify import request_for, send
from engine.run.spec import Budget, RunSpec, SpecError
from profiles import find_gpu_profile


def test_the_price_comes_from_the_flag_then_the_config_then_the_profile(
    isolated_home: Path,
) -> None:
    h100 = find_gpu_profile("h100")
    assert h100 is not None
    assert resolve_price("h100", given=None, on_cpu=False)[0] == h100.price_usd_per_hour
    assert resolve_price(None, given=None, on_cpu=True) == (None, None)
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text("[prices]\nH100 = 1.5\ncpu = 0.25\n")
    price, source = resolve_price("h100", given=None, on_cpu=False)
    assert price == 1.5 and "config.toml" in str(source)
    assert resolve_price(None, given=None, on_cpu=True)[0] == 0.25
    assert resolve_price("h100", given=3.0, on_cpu=False) == (3.0, "--price")
    (isolated_home / "config.toml").write_text("[prices]\nh100 = -2\n")
    with pytest.raises(FtuiError, match=r"prices\.h100"):
        resolve_price("h100", given=None, on_cpu=False)


def test_a_run_is_billed_for_each_attempt_not_the_time_between() -> None:
    events = [
        {"t": 100.0, "event": "supervisor_started"},
        {"t": 160.0, "event": "exited"},  # 60 s
        {"t": 1000.0, "event": "resume"},
        {"t": 1000.5, "event": "supervisor_started"},
        {"t": 1030.5, "event": "checkpoint"},  # killed: its last word was at 30 s
        {"t": 5000.0, "event": "supervisor_started"},
    ]
    assert run_seconds(events[:2], live=False, now=9e9) == 60
    assert run_seconds(events[:5], live=False, now=9e9) == 90
    assert run_seconds(events, live=True, now=5010.0) == 100


def test_the_watch_warns_once_on_the_projection_and_stops_at_the_cap() -> None:
    # $36/h = 1 cent a second, 10 s already spent, a $1 cap: 100 s in all.
    watch = BudgetWatch(usd_per_hour=36.0, max_cost=1.0, max_hours=None,
                        elapsed_at_begin=10.0, begin_t=0.0, start_step=0)  # fmt: skip
    assert watch.projection_over(2.0, 2, 100) is None  # too few steps to know the pace
    over = watch.projection_over(3.0, 3, 100)  # 1 s a step: 110 s, $1.10
    assert over is not None and over["max_cost"] == 1.0 and over["projected_usd"] > 1.0
    assert watch.projection_over(4.0, 4, 100) is None  # once
    assert watch.reached(89.0) is None
    assert "--max-cost $1" in str(watch.reached(90.0))
    hours = BudgetWatch(usd_per_hour=None, max_cost=5.0, max_hours=0.01,
                        elapsed_at_begin=0.0, begin_t=0.0, start_step=0)  # fmt: skip
    assert hours.active and hours.reached(35.0) is None and hours.reached(36.0)


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"max_cost": -1.0}, "budget.max_cost (--max-cost)"),
        ({"max_hours": 0.0}, "budget.max_hours (--max-hours)"),
        ({"price": float("nan")}, "budget.price (--price)"),
        ({"notify": "ftp://example.com/x"}, "budget.notify (--notify)"),
        ({"notify": "https://"}, "budget.notify (--notify)"),
    ],
)
def test_a_bad_cap_price_or_url_names_its_flag(budget: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        RunSpec(model="m", data="d.jsonl", budget=Budget(**budget)).validate()
    assert field in error.value.message


def test_the_budget_round_trips_through_the_spec_file() -> None:
    spec = RunSpec(model="m", data="d.jsonl",
                   budget=Budget(price=2.5, price_source="--price", max_cost=10.0,
                                 notify="https://ntfy.sh/t"))  # fmt: skip
    assert RunSpec.from_yaml(spec.to_yaml()) == spec


class Endpoint:
    def __init__(self, code: int) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.received.append((dict(self.headers), body))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint_ok() -> Iterator[Endpoint]:
    endpoint = Endpoint(200)
    yield endpoint
    endpoint.server.shutdown()


PAYLOAD = {"run_id": "r-1", "status": "failed", "summary": "ftui run r-1 failed (oom)"}


def test_the_webhook_gets_json_with_a_text_field(endpoint_ok: Endpoint) -> None:
    assert send(endpoint_ok.url, PAYLOAD) is None
    headers, body = endpoint_ok.received[0]
    data = json.loads(body)
    assert data["text"] == PAYLOAD["summary"] and data["status"] == "failed"
    assert headers["Content-Type"] == "application/json"


def test_ntfy_gets_plain_text_and_slack_only_its_text() -> None:
    body, headers = request_for("https://ntfy.sh/my-topic", PAYLOAD)
    assert body.decode() == PAYLOAD["summary"] and "r-1" in headers["Title"]
    body, _ = request_for("https://hooks.slack.com/services/T/B/x", PAYLOAD)
    assert json.loads(body) == {"text": PAYLOAD["summary"]}


def test_a_failing_or_absent_webhook_is_reported_not_raised() -> None:
    refusing = Endpoint(500)
    try:
        assert send(refusing.url, PAYLOAD) == "HTTP 500"
    finally:
        refusing.server.shutdown()
    started = time.monotonic()
    error = send(refusing.url, PAYLOAD, timeout=2)  # the server is gone: connection refused
    assert error is not None and time.monotonic() - started < 5
