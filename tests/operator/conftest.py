"""The operator's view under test: a scenario dispatcher, and artifacts (screenshots) listed at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compass_pilot.panda.dispatcher import Dispatcher
from tests.operator.scenario import build

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS: list[Path] = []


def artifact_dir() -> Path:
    """Where CI keeps what a person should look at: $COMPASS_TEST_ARTIFACTS, else <repo>/test-artifacts."""
    path = Path(os.environ.get("COMPASS_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_artifact(path: Path) -> Path:
    ARTIFACTS.append(path)
    print(f"artifact: {path}")
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in ARTIFACTS:
        terminalreporter.write_line(f"test artifact: {path}")


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[tuple[Dispatcher, dict[str, Any]]]:
    dispatcher, ids = build(tmp_path)
    try:
        yield dispatcher, ids
    finally:
        dispatcher.stop()
