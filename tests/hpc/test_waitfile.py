"""wait_for_file: a file renamed into a directory wakes the waiter; none within the timeout is False."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hpc import waitfile


def test_there_already(tmp_path: Path) -> None:
    (tmp_path / "jobset.json").write_text("{}")
    assert waitfile.wait_for_file(tmp_path / "jobset.json", timeout=0)


def test_renamed_in_by_another_thread(tmp_path: Path) -> None:
    target = tmp_path / "jobset.json"
    tmp = tmp_path / ".jobset.json.tmp"
    tmp.write_text("{}")
    timer = threading.Timer(0.3, os.replace, args=(tmp, target))
    timer.start()
    try:
        # a rescan longer than the test: only the inotify event can end the wait in time
        assert waitfile.wait_for_file(target, timeout=30, rescan=25)
    finally:
        timer.cancel()
    assert target.read_text() == "{}"


def test_other_names_do_not_count(tmp_path: Path) -> None:
    threading.Timer(0.1, (tmp_path / "other.json").write_text, args=("{}",)).start()
    assert not waitfile.wait_for_file(tmp_path / "jobset.json", timeout=0.6, rescan=0.2)


def test_without_inotify_the_rescan_finds_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(waitfile, "_inotify", lambda directory: -1)  # a writer on another host: no event
    target = tmp_path / "jobset.json"
    threading.Timer(0.2, target.write_text, args=("{}",)).start()
    assert waitfile.wait_for_file(target, timeout=30, rescan=0.3)


def test_a_missing_directory_times_out(tmp_path: Path) -> None:
    assert not waitfile.wait_for_file(tmp_path / "gone" / "jobset.json", timeout=0.3, rescan=0.1)
