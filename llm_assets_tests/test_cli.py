"""The `llm-assets` command: help everywhere, one-line errors, audit verify exit codes, the demo end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_assets.audit import AuditLog
from llm_assets.cli import main
from llm_assets.lake import LocalLakeStorage

COMMANDS = [
    [],
    ["demo"],
    ["ingest"],
    ["ui"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "show"],
    ["train"],
    ["train", "cpt"],
    ["train", "sft"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_everywhere(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LLM_ASSETS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.delenv("LLM_ASSETS_LAKE", raising=False)
    monkeypatch.delenv("LLM_ASSETS_LAKE_ROOT", raising=False)
    return home


def test_audit_verify_exit_codes(cli_env: Path) -> None:
    storage = LocalLakeStorage(cli_env / ".lake")
    log = AuditLog(storage)
    for i in range(3):
        log.append({"event": "materialization", "asset_key": "raw_corpus", "n": i})
    ok = CliRunner().invoke(main, ["audit", "verify"])
    assert ok.exit_code == 0 and "3 records" in ok.output

    path = cli_env / ".lake" / "audit" / "audit_log.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[1])
    edited["n"] = 99
    lines[1] = json.dumps(edited)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = CliRunner().invoke(main, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "line 2" in bad.output


def test_ingest_without_descriptor_is_one_line_error(cli_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["ingest", str(folder)])
    assert result.exit_code != 0
    assert "source.yaml" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ingest_bad_descriptor_is_one_line_error(cli_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "source.yaml").write_text("name: src\njurisdiction: GR\nsource_uri: x\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["ingest", str(folder)])
    assert result.exit_code != 0
    assert "licence" in result.output and "Traceback" not in result.output


@pytest.mark.timeout(2400)
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The README's first command after installation: a fresh home, the real instance, the sample corpus, and
    at the end the approved adapter served by vLLM on CPU with a load-test report and the health check passed."""
    from llm_assets.serving.vllm_server import free_port

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DAGSTER_HOME", "LLM_ASSETS_LAKE", "LLM_ASSETS_SERVE_API_KEY", "LLM_ASSETS_VLLM_PYTHON"}
    }
    env["LLM_ASSETS_HOME"] = str(tmp_path / "home")
    env["LLM_ASSETS_SERVE_PORT"] = str(free_port())
    env["LLM_ASSETS_VLLM_PYTHON"] = str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python")
    cli = Path(sys.executable).with_name("llm-assets")
    try:
        run = subprocess.run([str(cli), "demo"], env=env, capture_output=True, text=True, timeout=2300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        _assert_demo_outputs(run.stdout, tmp_path, env, cli)
        # The Dagster UI on the demo's instance, in a real browser: graph, checks tab, a metadata plot.
        from llm_assets_tests.ui_browser import check_dagster_ui

        shots = check_dagster_ui(env, cli, free_port(), tmp_path / "chromium-profile")
        assert len(shots) == 4 and all(shot.stat().st_size > 10_000 for shot in shots)
    finally:
        subprocess.run([str(cli), "serve", "stop"], env=env, capture_output=True, text=True, timeout=120)


def _assert_demo_outputs(stdout: str, tmp_path: Path, env: dict[str, str], cli: Path) -> None:
    import httpx

    assert "Materialized:" in stdout and "Audit trail:" in stdout and "intact" in stdout
    assert "FAILED" not in stdout
    # The tiny model really learns the held-out intents (README: the demo quality bar).
    adapter_line = next(line for line in stdout.splitlines() if "lora_adapter" in line and "accuracy" in line)
    before, after = (float(x.rstrip("%")) for x in adapter_line.split("accuracy ")[1].split(" -> "))
    assert after - before >= 20.0 and after >= 25.0, adapter_line
    # The evaluation framework's outputs: eval reports, adaptation curves per candidate and a selection.
    for asset, figure in (
        ("eval_report", "with it"),
        ("adaptation_curve", "per 1M tokens"),
        ("model_selection", "chosen: "),
    ):
        assert any(asset in line and figure in line for line in stdout.splitlines()), asset
    assert (tmp_path / "home" / ".dagster_home" / "dagster.yaml").is_file()
    verify = subprocess.run([str(cli), "audit", "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    # Serving: the endpoint is up behind its key, the load test passed the SLO, the registry says what serves.
    lines = stdout.splitlines()
    assert any("deployed_endpoint" in line and "serving at http://127.0.0.1:" in line for line in lines), stdout
    assert any("loadtest_report" in line and "p99 latency" in line for line in lines), stdout
    # Monitoring: the load test's own traffic was sampled, re-scrubbed and committed as today's partition.
    kept = r"(\d+) of (\d+) sampled requests kept"
    sampled = [re.search(kept, line) for line in lines if "production_samples" in line]
    assert any(m and int(m.group(1)) >= 1 for m in sampled), stdout
    url = f"http://127.0.0.1:{env['LLM_ASSETS_SERVE_PORT']}/v1"
    key = (tmp_path / "home" / ".serving" / "api-key").read_text().strip()
    body = {"model": "banking77_intents", "prompt": "I lost my card", "max_tokens": 4}
    assert httpx.post(f"{url}/completions", json=body, timeout=60).status_code == 401
    answer = httpx.post(f"{url}/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
    report = subprocess.run([str(cli), "registry", "list"], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "banking77_intents" in report and url in report, report
    reports = list((tmp_path / "home" / ".lake" / "serving" / "loadtests" / "llm-assets").glob("*.json"))
    assert any(json.loads(p.read_text()).get("health", {}).get("passed") for p in reports if p.name != "current.json")
    # The deployed model re-scored as the monthly schedule does: it reproduces its registration score.
    rescored = next(line for line in lines if "deployed_model_eval" in line and "at registration" in line)
    test_score, registered = re.search(r"test exact_match ([\d.]+) \(at registration ([\d.]+)\)", rescored).groups()
    assert test_score == registered, rescored
    # Compliance: the registered adapter's lineage report names its sources, licences, policy, gates, approval.
    assert any("compliance_report" in line and "banking77_intents" in line for line in lines), stdout
    reports = list((tmp_path / "home" / ".lake" / "compliance" / "reports" / "banking77_intents").rglob("report.md"))
    assert reports, "a compliance report for the registered adapter"
    text = reports[0].read_text()
    for fact in ("banking77", "CC-BY-4.0", "greek_laws", "default@", "business_score", "pii_leak", "llm-assets demo"):
        assert fact in text, fact
    # Residency: every version in the chain was attested and passed the default (local) policy.
    where = text.split("## Where data was stored and computed", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in where.splitlines() if line.startswith("| ") and "file://" in line]
    assert rows and all(line.rstrip(" |").endswith("PASS") for line in rows), where
    # Feedback through the gateway: a correction is accepted (201) and lands redacted in the lake's inbox.
    correction = {
        "model": "banking77_intents",
        "prompt": "My card has not arrived, mail me at ana@example.org",
        "response": answer.json()["choices"][0]["text"] or "(empty)",
        "correction": "card_arrival_unknown_label",
    }
    posted = httpx.post(f"{url}/feedback", json=correction, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert posted.status_code == 201, posted.text
    inbox = list((tmp_path / "home" / ".lake" / "feedback" / "inbox").rglob("*.jsonl"))
    assert len(inbox) == 1 and "ana@example.org" not in inbox[0].read_text()


def test_train_help_lists_the_asset_configs() -> None:
    result = CliRunner().invoke(main, ["train", "sft", "--help"])
    assert result.exit_code == 0
    for option in ("--task", "--lora-rank", "--learning-rate", "--epochs", "--precision", "--merge / --no-merge"):
        assert option in result.output


def test_train_rejects_a_bad_config_in_one_line(cli_env: Path) -> None:
    result = CliRunner().invoke(main, ["train", "sft", "--task", "banking77_intents", "--learning-rate", "-1"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid training config" in lines[0] and "learning_rate" in lines[0], result.output
    result = CliRunner().invoke(main, ["train", "cpt", "--mixture-weights", "{el: 1"])
    assert result.exit_code != 0 and "--mixture-weights: not a JSON object" in result.output
