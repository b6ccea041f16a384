"""Shared fixtures: every test gets its own lake and Dagster instance; nothing touches the project's state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.lake import LocalLakeStorage
from llm_assets.resources.lake import LocalLakeResource


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def lake(lake_root: Path) -> LocalLakeResource:
    return LocalLakeResource(root=str(lake_root))


@pytest.fixture
def storage(lake_root: Path) -> LocalLakeStorage:
    return LocalLakeStorage(lake_root)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance
