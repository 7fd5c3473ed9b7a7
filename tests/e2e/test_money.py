"""Money, for real: a CPU run with a price and a tiny `--max-cost` stops with reason budget (a
checkpoint, status stopped), refuses to resume under the same cap, resumes with a larger one to
completion; its `--notify` webhook (a real HTTP server on 127.0.0.1) receives each end with the
run's id and status; `ftui status --json` has the cost; a run whose projection exceeds its cap
raises the budget alert (events.jsonl and the dashboard's store).

Prices are chosen so the outcome does not depend on the machine's speed: $3600/h is $1 a second,
so a $1 cap is reached at the first step (loading alone takes longer); $0.036/h with a $0.01 cap
gives 1,000 s, and a million steps project far beyond it from the third step on.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.demo.tiny import build_tiny_model, write_demo_dataset
from engine.monitor.store import MetricsStore
from tests.e2e.runtime_helpers import (
    checkpoint_steps,
    ftui,
    launch,
    status,
    wait_event,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slow

TRAIN = ("--batch", "2", "--lr", "5e-3", "--seq-len", "64")


class Hook:
    """A webhook endpoint: records every POST (path, headers, JSON body)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(
                    {"path": self.path, "type": self.headers["Content-Type"],
                     "body": json.loads(body)}
                )  # fmt: skip
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self, run_id: str) -> list[str]:
        return [r["body"]["status"] for r in self.received if r["body"].get("run_id") == run_id]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("money")
    model = build_tiny_model(root / "model", pretrain_steps=0)
    data = write_demo_dataset(root / "data.jsonl")
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "FTUI_HOME": str(root / "home"), "PYTHONPATH": repo,
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    hook = Hook()
    # Both launched at once: their start-up (imports, loading) overlaps.
    capped = launch(env, model, data, "--max-steps", "8", "--save-steps", "4", *TRAIN,
                    "--price", "3600", "--max-cost", "1", "--notify", hook.url)  # fmt: skip
    projected = launch(env, model, data, "--max-steps", "1000000", "--save-steps", "1000", *TRAIN,
                       "--price", "0.036", "--max-cost", "0.01")  # fmt: skip
    yield {"env": env, "hook": hook, "capped": capped, "projected": projected}
    for run in (capped, projected):
        ftui(["stop", run.run_id, "--now"], env)
    hook.server.shutdown()


def test_a_cap_stops_the_run_with_a_checkpoint_and_a_larger_cap_resumes_it(
    setup: dict[str, Any],
) -> None:
    env, hook, run = setup["env"], setup["hook"], setup["capped"]
    state = wait_final(run, env)
    assert (state["status"], state["stop_reason"]) == ("stopped", "budget"), state
    assert checkpoint_steps(run), "a budget stop saves a checkpoint"
    assert not run.final.exists()
    shown = status(run, env)
    assert shown["label"] == "stopped (budget)"
    cost = shown["cost"]
    assert cost["price_per_gpu_hour"] == 3600 and cost["price_source"] == "--price"
    assert cost["max_cost"] == 1
    assert cost["spent_usd"] >= 1, cost  # $1 a second, and it ran past the cap
    assert cost["spent_usd"] == pytest.approx(cost["elapsed_s"], rel=0.01)
    text = ftui(["status", run.run_id], env).stdout
    assert "cost $" in text and "--max-cost $1" in text, text
    wait_for(lambda: hook.statuses(run.run_id) == ["stopped"], 30, "the webhook of the stop")
    sent = hook.received[0]
    assert sent["type"] == "application/json"
    assert "budget" in sent["body"]["summary"] and sent["body"]["text"] == sent["body"]["summary"]
    assert "secret-token" not in run.events.read_text(), "the URL's token never goes to a log"

    same_cap = ftui(["resume", run.run_id], env)
    assert same_cap.returncode == 2 and "--max-cost" in same_cap.stderr, same_cap.stderr
    bigger = ftui(["resume", run.run_id, "--max-cost", "100000"], env)
    assert bigger.returncode == 0, bigger.stderr
    state = wait_final(run, env)
    assert state["status"] == "completed", run.stdout.read_text()[-2000:]
    assert state.get("stop_reason") is None
    assert status(run, env)["cost"]["max_cost"] == 100000
    wait_for(lambda: hook.statuses(run.run_id) == ["stopped", "completed"], 30, "the webhook's end")


def test_a_projection_over_the_cap_raises_the_budget_alert(setup: dict[str, Any]) -> None:
    env, run = setup["env"], setup["projected"]
    event = wait_event(run, "budget_projection")
    assert event["max_cost"] == 0.01 and event["projected_usd"] > 0.01, event
    shown = status(run, env)
    assert shown["state"]["status"] == "running", "a projection warns, it does not stop"
    assert shown["cost"]["projected_usd"] > 0.01
    store = MetricsStore(run)
    alerts = store.refresh().alerts
    budget = [a for a in alerts if a.kind == "budget"]
    assert len(budget) == 1 and "$0.01" in budget[0].message, alerts
    assert ftui(["stop", run.run_id], env).returncode == 0
    assert wait_final(run, env)["status"] == "stopped"
