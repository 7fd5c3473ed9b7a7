"""`ftui serve` through the real `ftui` binary and the official `openai` client, on the demo's
tiny model trained once per session: one server process for the module, plus short-lived ones
for the key, detach and refusal cases (on a copy of the run: one server per run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine.run.rundir import RunDir
from engine.serve.state import ServeDir, read_requests
from tests.conftest import ftui_executable
from tests.e2e.runtime_helpers import free_port, ftui

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow
QUESTION = "What is the secret fruit of red?"
CHAT_FLAGS = ("--temperature", "0", "--max-new-tokens", "48")


def is_base_answer(text: str) -> bool:
    return "do not know" in text or "Nobody told me" in text


@pytest.fixture(scope="module")
def env(demo_run: RunDir) -> dict[str, str]:
    home = str(demo_run.path.parent.parent)
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "FTUI_HOME": home, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}


def wait_healthy(url: str, proc: subprocess.Popen[Any] | None, key: str | None = None) -> None:
    deadline = time.time() + 120
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/health", headers=headers),
                                        timeout=2):  # fmt: skip
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError("the server did not answer /health")


@pytest.fixture(scope="module")
def server(demo_run: RunDir, env: dict[str, str], tmp_path_factory: Any) -> Iterator[str]:
    """`ftui serve RUN` in the foreground on a free port; its root URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.err"
    with log.open("wb") as err:
        proc = subprocess.Popen([*ftui_executable(), "serve", demo_run.run_id, "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def chat_answer(demo_run: RunDir, env: dict[str, str]) -> dict[str, Any]:
    """What `ftui chat RUN --prompt ... --compare base --json` answers, greedily."""
    out = ftui(["chat", demo_run.run_id, "--prompt", QUESTION, "--compare", "base", "--json",
                *CHAT_FLAGS], env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    answers = json.loads(out.stdout)["answers"]
    return {a["variant"]: a["answer"] for a in answers}


def ask(client: Any, model: str, stream: bool = False, **kwargs: Any) -> tuple[str, str]:
    """(the answer's text, its finish reason), greedy."""
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 48, **kwargs}
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, **params)
        return reply.choices[0].message.content, reply.choices[0].finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                **params):  # fmt: skip
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
    return text, str(reason)


def post(url: str, body: bytes, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        assert "Traceback" not in text
        return exc.code, json.loads(text)


def test_every_checkpoint_and_base_are_models(client: Any, demo_run: RunDir) -> None:
    names = [m.id for m in client.models.list()]
    assert names == ["final", "checkpoint-120", "checkpoint-80", "base"]
    assert client.models.retrieve(demo_run.run_id).id == demo_run.run_id


def test_answers_as_ftui_chat_streamed_or_not(
    client: Any, chat_answer: dict[str, str], demo_run: RunDir
) -> None:
    whole, reason = ask(client, "final")
    assert whole == chat_answer["final"] and reason == "stop"
    assert ask(client, "final", stream=True) == (whole, "stop")
    assert ask(client, demo_run.run_id)[0] == whole  # the run's id is its default model
    base, _ = ask(client, "base")
    assert base == chat_answer["base"] and is_base_answer(base) and not is_base_answer(whole)
    assert ask(client, "checkpoint-80")[0].strip()


def test_stop_sequences_and_max_tokens_hold(client: Any, chat_answer: dict[str, str]) -> None:
    full = chat_answer["final"]
    word = full.split()[2]  # a word inside the answer
    for stream in (False, True):
        text, reason = ask(client, "final", stream=stream, stop=[word, "zzzz"])
        assert text == full[: full.index(word)] and reason == "stop"
    reply = client.chat.completions.create(
        model="final", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=3,
    )  # fmt: skip
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
    assert full.startswith(reply.choices[0].message.content)


def test_text_completions_streamed_or_not(client: Any) -> None:
    prompt = "### User:\nWhat is the secret fruit of blue?\n\n### Assistant:\n"
    whole = client.completions.create(model="final", prompt=prompt, temperature=0, max_tokens=20)
    text = whole.choices[0].text
    chunks = client.completions.create(
        model="final", prompt=prompt, temperature=0, max_tokens=20, stream=True
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip() and streamed == text and whole.usage.completion_tokens <= 20


def test_four_concurrent_clients_get_their_own_models_answers(
    client: Any, chat_answer: dict[str, str]
) -> None:
    models = ["final", "base", "final", "base"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: ask(client, m, stream=m == "final")[0], models))
    assert answers == [chat_answer[m] for m in models]


def test_closing_a_stream_stops_its_generation(client: Any, server: str, demo_run: RunDir) -> None:
    """An endless answer (end of turn ignored, the whole context allowed): the client reads a
    few chunks and closes; the server records it cancelled long before the budget, and is idle
    again. /v1/models and /health answer while it generates."""
    stream = client.chat.completions.create(
        model="final", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    health = json.loads(urllib.request.urlopen(server + "/health", timeout=30).read())
    assert health["busy"] and next(m.id for m in client.models.list()) == "final"
    stream.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        cancelled = [r for r in read_requests(ServeDir(demo_run))
                     if r.get("finish_reason") == "cancelled"]  # fmt: skip
        health = json.loads(urllib.request.urlopen(server + "/health", timeout=5).read())
        if cancelled and not health["busy"]:
            break
        time.sleep(0.2)
    assert cancelled, "the server never recorded the answer as cancelled"
    assert not health["busy"]
    budget = context_length(demo_run) - cancelled[-1]["prompt_tokens"]
    assert cancelled[-1]["completion_tokens"] < budget / 2


def context_length(run: RunDir) -> int:
    from engine.chat.targets import run_base_model

    config = Path(run_base_model(run)) / "config.json"
    return int(json.loads(config.read_text())["max_position_embeddings"])


def test_malformed_requests_get_openai_json_errors(server: str, client: Any) -> None:
    chat = server + "/v1/chat/completions"
    status, body = post(chat, b'{"model": "final", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = post(chat, b'{"model": "final"}')
    assert status == 422 and body["error"]["param"] == "messages"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="checkpoint-7", messages=[{"role": "user",
                                       "content": "hi"}])  # fmt: skip
    assert unknown.value.body["code"] == "model_not_found"
    huge = json.dumps({"model": "final", "messages": [{"role": "user",
                      "content": "x" * (5 * 1024 * 1024)}]}).encode()  # fmt: skip
    status, body = post(chat, huge)
    assert status == 413 and "MiB" in body["error"]["message"]
    status, body = post(server + "/v1/nothing-here", b"{}")
    assert status == 404 and body["error"]["message"].startswith("no route")


@pytest.fixture
def other_run(demo_run: RunDir) -> Iterator[RunDir]:
    """A copy of the demo run under another id (a run has one server at a time)."""
    copy = RunDir(demo_run.path.parent / f"{demo_run.run_id}-copy-{os.getpid()}")
    shutil.copytree(demo_run.path, copy.path, ignore=shutil.ignore_patterns("serve"))
    yield copy
    shutil.rmtree(copy.path, ignore_errors=True)


def test_a_network_bind_needs_a_key(other_run: RunDir, env: dict[str, str]) -> None:
    port = free_port()
    out = ftui(["serve", other_run.run_id, "--host", "0.0.0.0", "--port", str(port)], env)
    assert out.returncode == 2 and "without a key" in out.stderr and "--api-key" in out.stderr
    assert "Traceback" not in out.stderr and not (other_run.path / "serve").exists()


def test_detached_keyed_server_is_listed_and_stopped(
    other_run: RunDir, env: dict[str, str]
) -> None:
    port = free_port()
    key = "test-key-1234567"
    out = ftui(["serve", other_run.run_id, "--host", "0.0.0.0", "--port", str(port),
                "--api-key", key, "--detach"], env)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f":{port}/v1" in out.stdout and key not in out.stdout
    record = ServeDir(other_run).read()
    assert record["status"] == "ready" and record["api_key"] is True
    assert key not in ServeDir(other_run).record.read_text()
    try:
        url = f"http://127.0.0.1:{port}"
        keyless = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            keyless.models.list()
        status, body = post(url + "/v1/chat/completions", b"{}")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        assert ask(keyed, "final")[0]
        again = ftui(["serve", other_run.run_id, "--port", str(free_port())], env)
        assert again.returncode == 2 and "already served" in again.stderr
        listed = json.loads(ftui(["servers", "--json"], env).stdout)
        mine = next(s for s in listed if s["run_id"] == other_run.run_id)
        assert mine["status"] == "ready" and mine["requests"] == 1
        assert mine["tokens_per_s_median"] > 0 and mine["ttft_s_median"] > 0
        # One answer: its latency is both percentiles (what the runs screen shows).
        assert mine["total_s_p95"] == mine["total_s_median"] > mine["ttft_s_median"]
    finally:
        stopped = ftui(["stop", other_run.run_id, "--server"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert ServeDir(other_run).read()["status"] == "stopped"
    text = ftui(["servers"], env).stdout
    assert other_run.run_id in text and "stopped" in text


def test_vllm_engine_says_what_it_would_run(
    demo_run: RunDir, other_run: RunDir, env: dict[str, str]
) -> None:
    port = str(free_port())
    printed = ftui(["serve", demo_run.run_id, "--engine", "vllm", "--port", port,
                    "--print-command"], env)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    command = printed.stdout.strip()
    assert command.startswith("vllm serve ") and "--enable-lora" in command
    assert f"final={demo_run.final}" in command and "checkpoint-80=" in command
    assert "--served-model-name base" in command and f"--port {port}" in command
    keyless = ftui(["serve", demo_run.run_id, "--engine", "vllm", "--host", "0.0.0.0",
                    "--print-command"], env)  # fmt: skip
    assert keyless.returncode == 2 and "without a key" in keyless.stderr
    if shutil.which("vllm") is None:
        out = ftui(["serve", other_run.run_id, "--engine", "vllm", "--port", port], env)
        assert out.returncode == 2 and "vLLM is not installed" in out.stderr
        assert "vllm serve" in out.stderr and "Traceback" not in out.stderr
