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


def test_several_files_of_one_dir_replaced_in_order_and_a_failure_keeps_the_rest(tmp_path: Path) -> None:
    from compass_pilot.atomic import atomic_write_files

    (tmp_path / "b.json").write_text("old b")
    atomic_write_files(tmp_path, [("a.json", b"new a"), ("b.json", b"new b" * 10000)])
    assert (tmp_path / "a.json").read_bytes() == b"new a" and (tmp_path / "b.json").read_bytes() == b"new b" * 10000
    (tmp_path / "sub").mkdir()  # the second target is a directory: its rename fails
    with pytest.raises(OSError):
        atomic_write_files(tmp_path, [("a.json", b"newer a"), ("sub", b"x"), ("b.json", b"never")])
    assert (tmp_path / "a.json").read_bytes() == b"newer a"  # a prefix is replaced, nothing after the failure
    assert (tmp_path / "b.json").read_bytes() == b"new b" * 10000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "sub"]  # no temp left


def test_a_planted_link_under_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    """The temp name is predictable (process + thread): whatever sits there is replaced, never
    written through — a symlink to another file of ours leaves that file as it was."""
    import os
    import threading

    from compass_pilot.atomic import atomic_write_text

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    tag = f"{os.getpid()}.{threading.get_ident()}"
    (tmp_path / f".state.json.{tag}.tmp").symlink_to(victim)
    atomic_write_text(tmp_path / "state.json", "new state")
    assert victim.read_text() == "keep me"
    assert (tmp_path / "state.json").read_text() == "new state"
    assert not (tmp_path / "state.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]
