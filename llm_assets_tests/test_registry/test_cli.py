"""`llm-assets registry ...`: the acts through the CLI, against the lake the other commands use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_assets.audit import AuditLog
from llm_assets.cli import main
from llm_assets.lake import LocalLakeStorage
from llm_assets.registry import ModelRegistry

MODEL = "gr-qa"
ENDPOINT = "https://llm.internal/gr-qa"


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalLakeStorage:
    """The env the CLI reads its lake from (as in llm_assets_tests/test_cli.py), with two registered versions."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLM_ASSETS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("LLM_ASSETS_LAKE", raising=False)
    monkeypatch.delenv("LLM_ASSETS_LAKE_ROOT", raising=False)
    storage = LocalLakeStorage(home / ".lake")
    store = ModelRegistry(storage)
    for version, passed in (("v1", True), ("v2", True), ("v3", False)):
        store.register(
            MODEL,
            version,
            eval_metrics={"accuracy": 0.7},
            gates={"eval_qa_validated": {"passed": passed, "blocking": True}},
            lineage={"lora_adapter": version},
            registered_by="trainer-bot",
        )
    return storage


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["registry", *args])
    return result.exit_code, result.output


def test_acts_and_history(lake: LocalLakeStorage) -> None:
    assert run("approve", MODEL, "v1", "--by", "maria", "--reason", "QA passed") == (
        0,
        f"{MODEL} v1: approved by maria; status approved\n",
    )
    assert run("deploy", MODEL, "v1", "--by", "ops", "--endpoint", ENDPOINT)[0] == 0
    assert run("approve", MODEL, "v2", "--by", "nikos", "--reason", "better")[0] == 0
    assert run("deploy", MODEL, "v2", "--by", "ops", "--endpoint", ENDPOINT, "--reason", "release 2")[0] == 0
    code, out = run("rollback", MODEL, "--by", "ops", "--reason", "v2 regressed")
    assert code == 0 and "v1: rolled back to" in out
    assert run("retire", MODEL, "v2", "--by", "maria", "--reason", "superseded")[0] == 0

    code, out = run("list")
    assert code == 0 and f"v1 at {ENDPOINT}" in out
    code, out = run("show", MODEL)
    assert code == 0 and "v3" in out and "eval_qa_validated" in out
    code, out = run("show", MODEL, "v1")
    assert json.loads(out)["approval"]["by"] == "maria"

    code, out = run("history", MODEL)
    assert code == 0
    periods = out.split("Events:")[0].splitlines()[2:]
    assert [line.split()[0] for line in periods] == ["v1", "v2", "v1"]
    assert "maria" in periods[0] and "nikos" in periods[1] and periods[2].split()[2] == "now"
    assert "v2 regressed" in out
    assert [r["event"] for r in AuditLog(lake).records()][-6:] == [
        "registry.approve",
        "registry.deploy",
        "registry.approve",
        "registry.deploy",
        "registry.rollback",
        "registry.retire",
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["approve", MODEL, "v3", "--by", "maria", "--reason", "x"], "eval_qa_validated"),
        (["approve", MODEL, "v9", "--by", "maria", "--reason", "x"], "unknown version 'v9'"),
        (["deploy", MODEL, "v2", "--by", "ops", "--endpoint", ENDPOINT], "only approved versions deploy"),
        (["rollback", MODEL, "--by", "ops", "--reason", "x"], "no earlier deployed version"),
        (["history", "nobody"], "not registered"),
    ],
)
def test_errors_are_one_line(lake: LocalLakeStorage, args: list[str], needle: str) -> None:
    code, out = run(*args)
    assert code != 0
    assert needle in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_help() -> None:
    for command in ([], ["list"], ["show"], ["approve"], ["deploy"], ["rollback"], ["retire"], ["history"]):
        result = CliRunner().invoke(main, ["registry", *command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
