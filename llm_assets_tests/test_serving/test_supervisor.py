"""The supervised local endpoint: start, gateway auth, replica restart after a crash, stop; and the vLLM
command line. The engine is a stand-in process here (the demo test runs the real vLLM)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from llm_assets.serving.supervisor import EndpointSpec, ReplicaSpec, read_state, start_endpoint, stop_endpoint
from llm_assets.serving.vllm_server import (
    ServeError,
    VllmSettings,
    find_vllm_python,
    free_port,
    pid_alive,
    vllm_command,
)

FAKE = Path(__file__).with_name("fake_vllm.py")


@pytest.fixture()
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("LLM_ASSETS_VLLM_PYTHON", str(script))
    monkeypatch.setenv("LLM_ASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_ASSETS_SERVE_API_KEY", "k1,k2")
    return script


def _model(folder: Path, hidden: int = 64, heads: int = 2) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(f'{{"hidden_size": {hidden}, "num_attention_heads": {heads}}}')
    return str(folder)


def test_vllm_command_carries_adapters_and_no_secret() -> None:
    settings = VllmSettings(Path("/m"), "base", 8001, lora_modules={"b": Path("/a/b"), "a": Path("/a/a")})
    cmd = vllm_command(settings, Path("/py"))
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--lora-modules") + 1 :][:2] == ["a=/a/a", "b=/a/b"]
    assert "--enable-lora" in cmd and "--api-key" not in cmd and "127.0.0.1" in cmd
    with pytest.raises(ServeError, match="max_lora_rank 12"):
        VllmSettings(Path("/m"), "base", 1, lora_modules={"a": Path("/a")}, max_lora_rank=12)


def test_missing_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist"):
        find_vllm_python({"LLM_ASSETS_VLLM_PYTHON": str(tmp_path / "nope")})


def test_start_serve_restart_and_stop(fake_engine: Path) -> None:
    spec = EndpointSpec(
        name="t",
        replicas=[
            ReplicaSpec(_model(fake_engine.parent / "merged"), "banking"),
            ReplicaSpec(_model(fake_engine.parent / "base"), "base", {"civics": "/a"}),
        ],
        routes={"banking77_intents": [(0, "banking")], "civics": [(1, "civics")]},
        port=free_port(),
        start_timeout_s=60,
        max_restarts=2,
    )
    state = start_endpoint(spec, log=lambda _: None)
    try:
        assert state["status"] == "ready" and state["engine"] == "vllm 0.0.0-fake"
        url = state["url"]
        for key in ("k1", "k2"):  # rotation: either key works
            ok = httpx.post(
                f"{url}/completions",
                json={"model": "civics", "prompt": "x"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert ok.status_code == 200 and ok.json()["model"] == "civics"  # routed to the replica's name
        assert httpx.post(f"{url}/completions", json={"model": "civics", "prompt": "x"}).status_code == 401
        # The replicas take only the internal key: the public key does not open them directly.
        replica = state["replicas"][0]["url"]
        direct = httpx.post(
            f"{replica}/v1/completions",
            json={"model": "banking", "prompt": "x"},
            headers={"Authorization": "Bearer k1"},
        )
        assert direct.status_code == 401
        # A replica that dies is restarted on its port and the route works again.
        first_pid = state["replicas"][0]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        auth = {"Authorization": "Bearer k1"}
        deadline = time.monotonic() + 30
        while True:
            now = read_state("t") or {}
            if now["replicas"][0]["restarts"] == 1 and now["status"] == "ready":
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        again = httpx.post(f"{url}/completions", json={"model": "banking77_intents", "prompt": "x"}, headers=auth)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] != f"pid {first_pid}"
    finally:
        assert stop_endpoint("t")
    final = read_state("t") or {}
    assert final["status"] == "stopped"
    assert not any(pid_alive(r["pid"]) for r in final["replicas"])
    assert not pid_alive(final["supervisor_pid"])


def test_a_replica_that_cannot_start_fails_in_one_line(fake_engine: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'RuntimeError: Unsupported CPU attention configuration' >&2\nexit 1\n")
    broken.chmod(0o755)
    os.environ["LLM_ASSETS_VLLM_PYTHON"] = str(broken)
    spec = EndpointSpec(
        name="b",
        replicas=[ReplicaSpec(_model(tmp_path / "m"), "m")],
        routes={"m": [(0, "m")]},
        port=free_port(),
        start_timeout_s=30,
    )
    with pytest.raises(ServeError) as info:
        start_endpoint(spec, log=lambda _: None)
    assert "\n" not in str(info.value) and "failed to start" in str(info.value)


def test_start_needs_an_api_key(fake_engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_ASSETS_SERVE_API_KEY")
    spec = EndpointSpec(name="n", replicas=[ReplicaSpec("/m", "m")], routes={"m": [(0, "m")]})
    with pytest.raises(ServeError, match="LLM_ASSETS_SERVE_API_KEY"):
        start_endpoint(spec)


def test_a_head_size_vllm_cpu_cannot_run_is_refused_before_start(fake_engine: Path) -> None:
    narrow = _model(fake_engine.parent / "narrow", hidden=64, heads=4)  # head_dim 16
    spec = EndpointSpec(name="h", replicas=[ReplicaSpec(narrow, "m")], routes={"m": [(0, "m")]}, port=free_port())
    with pytest.raises(ServeError, match="head size 16 is not served by vLLM on CPU"):
        start_endpoint(spec, log=lambda _: None)
