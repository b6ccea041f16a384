"""Where the embedded defaults keep their state, so that no environment variable is needed.

`LLM_ASSETS_HOME` overrides the location; otherwise a source checkout (editable install) keeps
everything inside the checkout, and an installed package uses `~/.llm_assets`.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_home() -> Path:
    """The folder that holds `dagster.yaml`, the Dagster instance and the local lake."""
    env = os.environ.get("LLM_ASSETS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "dagster.yaml").is_file():
        return checkout
    return Path.home() / ".llm_assets"


def dagster_home() -> Path:
    """DAGSTER_HOME for the embedded instance: SQLite storage lives here (git-ignored)."""
    return project_home() / ".dagster_home"


def local_lake_root() -> Path:
    """Root of the default local lake (shards, manifests, audit trail, landing folder)."""
    return project_home() / ".lake"


def sample_corpus_dir() -> Path:
    """The bundled multilingual sample corpus shipped inside the package."""
    return _PACKAGE_DIR / "sample_corpus"
