"""Prepares the embedded Dagster instance: DAGSTER_HOME inside the project, SQLite, telemetry off."""

from __future__ import annotations

import os
from pathlib import Path

from llm_assets.paths import dagster_home, project_home

_FALLBACK_DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME when the operator set one; otherwise create `.dagster_home/` with our dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    template = project_home() / "dagster.yaml"
    text = template.read_text(encoding="utf-8") if template.is_file() else _FALLBACK_DAGSTER_YAML
    target = home / "dagster.yaml"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
