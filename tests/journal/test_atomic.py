"""The one atomic-write helper: all or nothing, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from compass_pilot.atomic import atomic_write_text


def test_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    atomic_write_text(target, "hint", durable=False)
    assert target.read_text() == "hint"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "\udcff")  # not encodable: the write fails mid-way
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
