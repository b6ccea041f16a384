"""Versioned PII policies: what to do with each data class (redact / drop the document / keep), per jurisdiction.

Profiles live in `policies/<name>.yaml`. `PiiPolicy.sha256` fingerprints the validated content (not comments or
layout), so lineage records exactly which rules a shard was scrubbed with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

PiiKind = Literal[
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "gr_afm",
    "gr_amka",
    "person",
    "location",
]
PiiAction = Literal["redact", "drop", "keep"]

PII_KINDS: tuple[str, ...] = get_args(PiiKind)

PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "iban": "[IBAN]",
    "us_ssn": "[SSN]",
    "ip_address": "[IP]",
    "gr_afm": "[AFM]",
    "gr_amka": "[AMKA]",
    "person": "[PERSON]",
    "location": "[LOCATION]",
}

POLICIES_DIR = Path(__file__).parent / "policies"


class PolicyError(ValueError):
    """A policy name, file or content that cannot be used; the message is one line and names the fix."""


class PiiPolicy(BaseModel):
    """Action per PII kind, with optional per-jurisdiction overrides (keys are upper-case codes, e.g. `GR`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    description: str = ""
    actions: dict[PiiKind, PiiAction]
    jurisdictions: dict[str, dict[PiiKind, PiiAction]] = {}

    @field_validator("actions")
    @classmethod
    def _every_kind_has_an_action(cls, actions: dict[str, str]) -> dict[str, str]:
        missing = [kind for kind in PII_KINDS if kind not in actions]
        if missing:
            raise ValueError(f"no action for {', '.join(missing)} (each of {', '.join(PII_KINDS)} needs one)")
        return actions

    @field_validator("jurisdictions")
    @classmethod
    def _upper_case_codes(cls, overrides: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        return {code.strip().upper(): actions for code, actions in overrides.items()}

    def action_for(self, kind: str, jurisdiction: str | None = None) -> PiiAction:
        if jurisdiction:
            override = self.jurisdictions.get(jurisdiction.strip().upper())
            if override and kind in override:
                return override[kind]
        return self.actions[kind]  # type: ignore[index]

    def kinds_to_scan(self, jurisdiction: str | None = None) -> frozenset[str]:
        """Kinds whose action is not `keep` for this jurisdiction (None: the base actions only)."""
        return frozenset(kind for kind in PII_KINDS if self.action_for(kind, jurisdiction) != "keep")

    def all_kinds_to_scan(self) -> frozenset[str]:
        """Kinds that some jurisdiction of this policy redacts or drops."""
        kinds = set(self.kinds_to_scan())
        for code in self.jurisdictions:
            kinds |= self.kinds_to_scan(code)
        return frozenset(kinds)

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def available_policies() -> list[str]:
    return sorted(path.stem for path in POLICIES_DIR.glob("*.yaml"))


def load_policy(name_or_path: str | Path) -> PiiPolicy:
    """A bundled profile by name (`default`, `eu-gdpr`, `gr`) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        path = POLICIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(available_policies())
            raise PolicyError(f"unknown PII policy {str(name_or_path)!r}: use one of {known} or a path to a .yaml file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: PII policy file not found") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise PolicyError(f"{path}: not valid YAML ({detail})") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: a PII policy must be a YAML mapping with name, version and actions")
    try:
        return PiiPolicy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise PolicyError(f"{path}: invalid PII policy ({problems})") from None
