"""Feedback end to end: inbox JSONL -> feedback_examples -> SFT pairs and preference pairs dpo_adapter reads."""

import json
from pathlib import Path

import dagster as dg

from llm_assets.curation.pii.policy import load_policy
from llm_assets.defs.monitoring.feedback import (
    FEEDBACK_PREFERENCES_KEY,
    FEEDBACK_REJECTS_KEY,
    FEEDBACK_SFT_KEY,
    feedback_examples,
)
from llm_assets.defs.training.assets import SFT_PREFIX
from llm_assets.lake import LocalLakeStorage
from llm_assets.monitoring.feedback import FeedbackInbox, build_examples
from llm_assets.resources.lake import LocalLakeResource
from llm_assets.training.dpo import read_preference_pairs

TASK = "banking77_intents"


def _row(prompt: str, response: str, correction: str) -> bytes:
    return json.dumps({"model": TASK, "prompt": prompt, "response": response, "correction": correction}).encode()


def test_build_examples_scrubs_dedups_and_rejects() -> None:
    lines = [
        _row("My card was stolen, call me on +44 20 7946 0958", "exchange_rate", "lost_card"),
        _row("my card was STOLEN, call me on +44 20 7946 0958", "exchange_rate", "lost_card"),  # duplicate
        _row("When does my card arrive?", "card_arrival", "card_arrival"),  # no change
        _row("What is the exchange rate?", "lost_card", "exchange_rate"),  # already in training
        b"{oops",
        json.dumps({"model": TASK, "prompt": "x"}).encode(),
    ]
    batch = build_examples(
        [("feedback/inbox/a.jsonl", b"\n".join(lines))],
        load_policy("eu-gdpr"),
        {TASK: {"what is the exchange rate?"}},
    )
    assert batch.lines == 6 and len(batch.sft) == 1 and len(batch.rejects) == 5
    assert [r["rule"] for r in batch.rejects] == ["duplicate", "no_change", "in_training", "json", "schema"]
    assert "7946" not in batch.sft[0]["prompt"] and "[PHONE]" in batch.sft[0]["prompt"]
    pair = batch.preferences[0]
    assert pair["chosen"] == "lost_card" and pair["rejected"] == "exchange_rate" and pair["id"] == batch.sft[0]["id"]


def test_feedback_examples_asset_feeds_dpo(lake_root: Path, instance: dg.DagsterInstance) -> None:
    storage = LocalLakeStorage(lake_root)
    prefix = f"{SFT_PREFIX}/{TASK}/v1"
    storage.write_bytes(
        f"{prefix}/train.prompt_completion.jsonl",
        (json.dumps({"prompt": "What is the exchange rate?", "completion": " exchange_rate"}) + "\n").encode(),
    )
    storage.write_bytes(f"{SFT_PREFIX}/{TASK}/current.json", json.dumps({"prefix": prefix}).encode())
    storage.write_bytes(
        "feedback/inbox/2026-11-23-reviewer.jsonl",
        b"\n".join(
            [
                _row("Write to ana@example.org: my card never came", "exchange_rate", "card_arrival"),
                _row("What is the exchange rate?", "lost_card", "exchange_rate"),
                b"\xff not utf-8",
            ]
        ),
    )
    submission = {"model": TASK, "prompt": "Is my transfer stuck?", "response": "exchange_rate"}
    FeedbackInbox(storage).submit(submission | {"correction": "pending_transfer"})  # what POST /v1/feedback stores
    result = dg.materialize(
        [feedback_examples], resources={"lake": LocalLakeResource(root=str(lake_root))}, instance=instance
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"counts_reconcile": True, "no_structured_pii": True}
    pairs = read_preference_pairs(storage.read_bytes(FEEDBACK_PREFERENCES_KEY), "feedback")
    assert sorted(p.chosen for p in pairs) == ["card_arrival", "pending_transfer"]
    assert not any("ana@example.org" in p.prompt for p in pairs)
    sft = [json.loads(line) for line in storage.read_bytes(FEEDBACK_SFT_KEY).splitlines()]
    assert sorted(r["completion"] for r in sft) == ["card_arrival", "pending_transfer"]
    assert {r["task"] for r in sft} == {TASK}
    rejects = [json.loads(line) for line in storage.read_bytes(FEEDBACK_REJECTS_KEY).splitlines()]
    assert sorted(r["rule"] for r in rejects) == ["in_training", "utf8"]
