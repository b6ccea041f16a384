"""PII policies: bundled profiles load, overrides apply per jurisdiction, bad input fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_assets.curation.pii.policy import (
    PII_KINDS,
    PLACEHOLDERS,
    PiiPolicy,
    PolicyError,
    available_policies,
    load_policy,
)

ALL_REDACT = "\n".join(f"  {kind}: redact" for kind in PII_KINDS)


def write(tmp_path: Path, body: str, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["default", "eu-gdpr", "gr"])
def test_bundled_profiles_load(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name
    assert policy.version
    assert set(policy.actions) == set(PII_KINDS)
    assert len(policy.sha256) == 64


def test_available_policies() -> None:
    assert {"default", "eu-gdpr", "gr"} <= set(available_policies())


def test_every_kind_has_a_placeholder() -> None:
    assert set(PLACEHOLDERS) == set(PII_KINDS)
    assert PLACEHOLDERS["email"] == "[EMAIL]"
    assert PLACEHOLDERS["us_ssn"] == "[SSN]"


def test_profiles_differ_where_they_should() -> None:
    default, gdpr, gr = load_policy("default"), load_policy("eu-gdpr"), load_policy("gr")
    assert default.action_for("person") == "keep"
    assert gdpr.action_for("person") == "redact"
    assert gdpr.action_for("credit_card") == "drop"
    assert len({default.sha256, gdpr.sha256, gr.sha256}) == 3


def test_jurisdiction_override() -> None:
    gr = load_policy("gr")
    assert gr.action_for("gr_amka") == "redact"
    assert gr.action_for("gr_amka", "GR") == "drop"
    assert gr.action_for("gr_amka", " gr ") == "drop"
    assert gr.action_for("gr_amka", "DE") == "redact"
    assert gr.action_for("email", "GR") == "redact"
    assert "gr_amka" in gr.kinds_to_scan("GR")


def test_kinds_to_scan_leaves_out_keep() -> None:
    default = load_policy("default")
    assert default.kinds_to_scan() == frozenset(PII_KINDS) - {"person", "location"}
    assert default.all_kinds_to_scan() == default.kinds_to_scan()


def test_sha256_follows_content_not_layout(tmp_path: Path) -> None:
    base = f"name: x\nversion: '1'\nactions:\n{ALL_REDACT}\n"
    a = load_policy(write(tmp_path, base, "a.yaml"))
    b = load_policy(write(tmp_path, "# a comment\n" + base.replace("version: '1'", 'version: "1"'), "b.yaml"))
    c = load_policy(write(tmp_path, base.replace("email: redact", "email: drop"), "c.yaml"))
    assert a.sha256 == b.sha256
    assert a.sha256 != c.sha256


def test_load_from_path_with_override(tmp_path: Path) -> None:
    body = f"name: team\nversion: 2.1.0\nactions:\n{ALL_REDACT}\njurisdictions:\n  de:\n    iban: keep\n"
    policy = load_policy(write(tmp_path, body))
    assert policy.jurisdictions == {"DE": {"iban": "keep"}}
    assert policy.action_for("iban", "DE") == "keep"
    assert "iban" not in policy.kinds_to_scan("DE")


def test_unknown_name_is_one_clear_line() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy("strict")
    message = str(err.value)
    assert "\n" not in message
    assert "unknown PII policy 'strict'" in message
    assert "default" in message and "eu-gdpr" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.yaml")


def test_bad_yaml_is_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nactions: [email: redact\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("- just a list\n", "must be a YAML mapping"),
        ("name: x\nversion: '1'\nactions:\n  email: redact\n", "no action for phone"),
        (f"name: x\nversion: '1'\nactions:\n{ALL_REDACT.replace('email: redact', 'email: mask')}\n", "actions.email"),
        (f"name: x\nversion: '1'\nactions:\n{ALL_REDACT}\n  passport: drop\n", "passport"),
        (f"version: '1'\nactions:\n{ALL_REDACT}\n", "name"),
        (f"name: x\nversion: '1'\nactions:\n{ALL_REDACT}\nextra: 1\n", "extra"),
    ],
)
def test_invalid_policies(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(write(tmp_path, body))
    assert "\n" not in str(err.value)
    assert expected in str(err.value)
    assert "invalid PII policy" in str(err.value) or "mapping" in str(err.value)


def test_policy_in_code() -> None:
    policy = PiiPolicy(name="inline", version="0", actions=dict.fromkeys(PII_KINDS, "keep"))
    assert policy.kinds_to_scan() == frozenset()
