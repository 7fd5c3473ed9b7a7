"""Models from the Hugging Face hub, end to end: `ftui plan/download/launch/export` as
subprocesses, the real `huggingface_hub` client, real HTTP against a local stand-in of the hub
(tests/hubserver.py) that `HF_ENDPOINT` points at."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ftui_executable
from tests.e2e.runtime_helpers import free_port
from tests.hubserver import HubServer

# org/big's weights: huggingface_hub writes downloads in 10 MiB pieces, so a cut keeps whole
# pieces; 24 MiB leaves room to cut twice.
BIG = 24 * 1024 * 1024
PIECE = 10 * 1024 * 1024
DECOYS = {
    "pytorch_model.bin": b"duplicate weights in torch format",
    "original/consolidated.pth": b"meta's original checkpoint",
    "model-q4_k_m.gguf": b"a llama.cpp quantisation",
    "onnx/model.onnx": b"an onnx export",
}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from engine.demo.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("hub-model") / "tiny", pretrain_steps=0)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub(tiny_files: dict[str, bytes]) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo("org/tiny", {**tiny_files, **DECOYS})
        server.add_repo("org/gated", tiny_files, gated=True)
        big = {
            "config.json": tiny_files["config.json"],
            "model.safetensors": os.urandom(BIG),
        }
        server.add_repo("org/big", big)
        yield server


@pytest.fixture
def env(hub: HubServer, tmp_path: Path, isolated_home: Path) -> dict[str, str]:
    """A fresh machine: empty HF cache, the stand-in as the hub, no token."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING")) and k != "TRANSFORMERS_OFFLINE"
    }
    out.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        FTUI_HOME=str(isolated_home),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    hub.throttle = None
    hub.tokens.clear()
    hub.gated_access.clear()
    hub.log.clear()
    return out


def ftui(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def snapshot_of(env: dict[str, str], repo_id: str) -> Path:
    storage = Path(env["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = (storage / "refs" / "main").read_text().strip()
    return storage / "snapshots" / commit


def weight_gets(hub: HubServer, repo_id: str) -> list[str | None]:
    """The Range header of every GET of `repo_id`'s weights (None: from the start)."""
    return [
        r.range
        for r in hub.requests("GET", f"/{repo_id}/resolve/")
        if r.path.endswith(".safetensors")
    ]


def test_plan_a_model_that_is_only_on_the_hub(hub: HubServer, env: dict[str, str]) -> None:
    out = ftui(["plan", "--model", "org/tiny", "--simulate", "h100", "--json"], env)
    assert out.returncode == 0, out.stderr
    model = json.loads(out.stdout)["model"]
    assert model["hf_id"] == "org/tiny" and model["source"] == "hub"
    assert weight_gets(hub, "org/tiny") == []  # planning fetched no weights
    snapshot = snapshot_of(env, "org/tiny")
    assert {"config.json", "tokenizer.json"} <= {p.name for p in snapshot.iterdir()}
    assert not list(snapshot.glob("*.safetensors"))


def test_download_shows_progress_and_fills_the_hf_cache(
    hub: HubServer, env: dict[str, str], tiny_files: dict[str, bytes]
) -> None:
    out = ftui(["download", "org/tiny", "--json"], env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    plan, progress, done = events[0], events[1:-1], events[-1]
    assert plan["event"] == "plan" and done["event"] == "done"
    assert sorted(plan["skipped"]) == sorted(DECOYS)
    assert plan["total_bytes"] == sum(len(tiny_files[f["path"]]) for f in plan["files"])
    dones = [e["done"] for e in progress]
    assert dones == sorted(dones) and dones[-1] == plan["total_bytes"]
    assert {e["total"] for e in progress} == {plan["total_bytes"]}
    # The standard cache layout: snapshots/<commit>/<file> -> ../../blobs/<etag>.
    snapshot = snapshot_of(env, "org/tiny")
    assert Path(done["path"]) == snapshot
    for name, content in tiny_files.items():
        assert (snapshot / name).is_symlink() and (snapshot / name).read_bytes() == content
    assert not any((snapshot / name).exists() for name in DECOYS)
    assert not [r for r in hub.requests("GET", "/org/tiny/resolve/") if r.path.endswith(
        tuple(DECOYS))]  # fmt: skip
    # A second call finds everything in place and downloads nothing.
    before = len(weight_gets(hub, "org/tiny"))
    again = ftui(["download", "org/tiny", "--json"], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[0])["missing_bytes"] == 0
    assert len(weight_gets(hub, "org/tiny")) == before


def _wait_for_partial(storage: Path, at_least: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.time() + 60
    while time.time() < deadline:
        partial = list((storage / "blobs").glob("*.incomplete")) if storage.exists() else []
        size = max((p.stat().st_size for p in partial), default=0)
        if size >= at_least:
            return size
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the download never got going")


def test_a_cut_download_resumes_to_identical_bytes(
    hub: HubServer, env: dict[str, str], tmp_path: Path
) -> None:
    from engine.demo.tiny import write_demo_dataset

    data = write_demo_dataset(tmp_path / "data.jsonl")
    storage = Path(env["HF_HOME"]) / "hub" / "models--org--big"
    hub.throttle = 8_000_000  # bytes/s: the file takes ~3 s
    # Ctrl-C: a clear message, exit 130, the partial file kept.
    proc = subprocess.Popen(
        [*ftui_executable(), "download", "org/big"], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for_partial(storage, PIECE, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "resumes" in stderr
    # A dropped SSH session: the process dies without a word.
    proc = subprocess.Popen([*ftui_executable(), "download", "org/big"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    kept = _wait_for_partial(storage, 2 * PIECE, proc)
    proc.kill()
    proc.communicate(timeout=30)
    # Nothing looks complete: the weights are not in the snapshot.
    assert not list(storage.glob("snapshots/*/model.safetensors"))
    launch = ftui(["launch", "--model", "org/big", "--data", str(data), "--device", "cpu"], env)
    assert launch.returncode == 2, launch.stderr
    assert "the weights of org/big are not on this machine" in launch.stderr
    assert "--download" in launch.stderr
    hub.throttle = None
    out = ftui(["download", "org/big", "--json"], env)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout.splitlines()[0])
    assert plan["partial_bytes"] >= kept
    ranges = weight_gets(hub, "org/big")
    assert ranges[0] is None and ranges[1] is not None and ranges[-1] is not None
    resumed_from = int(ranges[-1].removeprefix("bytes=").split("-")[0])
    assert resumed_from >= kept  # only the rest went over the wire
    served = hub.repos["org/big"].commits[hub.repos["org/big"].branches["main"]]
    got = (snapshot_of(env, "org/big") / "model.safetensors").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(served["model.safetensors"]).digest()
    assert not list((storage / "blobs").glob("*.incomplete"))


def test_a_download_that_does_not_fit_is_refused_before_any_byte(
    hub: HubServer, env: dict[str, str], tmp_path: Path
) -> None:
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root")
    try:
        out = ftui(["download", "org/big"], {**env, "HF_HUB_CACHE": str(small)})
        assert out.returncode == 2, out.stderr
        assert "needs 25.2 MB more" in out.stderr and "free" in out.stderr
        assert "HF_HUB_CACHE" in out.stderr
        assert weight_gets(hub, "org/big") == []
        assert not list(small.rglob("*.safetensors*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_gated_model_names_the_page_and_the_login(hub: HubServer, env: dict[str, str]) -> None:
    for args in (["download", "org/gated"], ["plan", "--model", "org/gated", "--simulate", "h100"]):
        out = ftui(args, env)
        assert out.returncode == 2, out.stderr
        assert "gated" in out.stderr and f"{hub.endpoint}/org/gated" in out.stderr
        assert "hf auth login" in out.stderr and "Traceback" not in out.stderr
    # With a token that was granted access, the same download works.
    hub.tokens.add("hf_granted_0123456789")
    hub.gated_access.add("hf_granted_0123456789")
    out = ftui(["download", "org/gated", "--json"], {**env, "HF_TOKEN": "hf_granted_0123456789"})
    assert out.returncode == 0, out.stderr
    assert "hf_granted_0123456789" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "expected"),
    [
        (["download", "org/tiny"], {"HF_TOKEN": "hf_revoked_token_42"},
         "refused the Hugging Face token from HF_TOKEN (401"),
        (["download", "org/tiny", "--revision", "v9"], {}, "has no revision 'v9'"),
        (["download", "org/no-such-model"], {}, "not on http://127.0.0.1"),
        (["plan", "--model", "meta-llama/Llama-3.1-8X", "--simulate", "h100"], {},
         "did you mean: "),
        (["download", "org/tiny"], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        (["plan", "--model", "org/unseen", "--simulate", "h100"], {"HF_HUB_OFFLINE": "1"},
         "HF_HUB_OFFLINE is set: unset it to fetch org/unseen"),
    ],
)  # fmt: skip
def test_hub_errors_are_one_message_and_exit_2(
    env: dict[str, str], args: list[str], extra_env: dict[str, str], expected: str
) -> None:
    out = ftui(args, {**env, **extra_env})
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert "hf_revoked_token_42" not in out.stdout + out.stderr


def test_no_network_says_what_still_works(env: dict[str, str]) -> None:
    nowhere = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    out = ftui(["download", "org/tiny"], nowhere)
    assert out.returncode == 2, out.stderr
    assert "cannot reach the Hugging Face hub" in out.stderr
    assert "offline, ftui still plans built-in profiles" in out.stderr


@pytest.mark.slow
def test_launch_with_download_trains_and_the_export_pushes_back(
    hub: HubServer, env: dict[str, str], tmp_path: Path, isolated_home: Path
) -> None:
    from engine.demo.tiny import write_demo_dataset
    from tests.e2e.runtime_helpers import wait_final

    token = "hf_planted_secret_7f3a9c"
    hub.tokens.add(token)
    env = {**env, "HF_TOKEN": token}
    data = write_demo_dataset(tmp_path / "data.jsonl")
    outputs: list[str] = []

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        out = ftui(args, env, timeout=300)
        outputs.extend((out.stdout, out.stderr))
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    launched = run(["launch", "--model", "org/tiny", "--download", "--data", str(data),
                    "--device", "cpu", "--max-steps", "3", "--save-steps", "3",
                    "--json"])  # fmt: skip
    run_id = json.loads(launched.stdout)["run_id"]
    assert (snapshot_of(env, "org/tiny") / "model.safetensors").is_file()
    from engine.run.rundir import RunDir

    state = wait_final(RunDir(isolated_home / "runs" / run_id), env)
    assert state["status"] == "completed"

    out_dir = tmp_path / "export"
    pushed = run(["export", run_id, "--out", str(out_dir), "--merge",
                  "--push-to-hub", "tester/tiny-support", "--private", "--json"])  # fmt: skip
    # (deepspeed may print a warning line before the JSON)
    report = json.loads(pushed.stdout[pushed.stdout.index("{\n") :])
    assert report["pushed"] == f"{hub.endpoint}/tester/tiny-support"
    repo = hub.repos["tester/tiny-support"]
    assert repo.private
    on_hub = repo.commits[repo.branches["main"]]
    exported = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}
    assert "README.md" in exported and "model.safetensors" in exported
    assert {k: v for k, v in on_hub.items() if k in exported} == exported

    # Pushed, then downloaded on a fresh machine: the same files, byte for byte.
    fresh = {**env, "HF_HOME": str(tmp_path / "another-machine")}
    got = ftui(["download", "tester/tiny-support", "--json"], fresh)
    outputs.extend((got.stdout, got.stderr))
    assert got.returncode == 0, got.stderr
    snapshot = Path(json.loads(got.stdout.splitlines()[-1])["path"])
    downloaded = {p.name: p.read_bytes() for p in snapshot.iterdir()}
    assert "model.safetensors" in downloaded and "config.json" in downloaded
    assert downloaded == {k: exported[k] for k in downloaded}

    # The token never lands in what ftui printed or wrote.
    assert not [text for text in outputs if token in text]
    for root in (isolated_home, out_dir, Path(env["HF_HOME"]), tmp_path / "another-machine"):
        leaked = [p for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
        assert not leaked, leaked


def test_a_profile_plans_without_the_hub_client_or_a_network(env: dict[str, str]) -> None:
    """Step 4 is the last resort: a profile never loads huggingface_hub, reachable or not."""
    nowhere = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui",
         "plan", "--model", "qwen2.5-7b", "--simulate", "h100", "--json"],
        env=nowhere, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["model"]["source"] == "profile"
    assert "huggingface_hub" not in out.stderr
