"""The monitor page as a person sees it: rendered by a real headless Chromium, its DOM checked.

What the operator must see at a glance: the stuck job (sent an hour ago, its pilot
silent), the looping error by its pilot3 name counted by jobs, and the task at 40 %.
The screenshot is kept as a test artifact and its path printed in the test summary.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from typing import Any

import pytest

from tests.operator.conftest import artifact_dir, keep_artifact

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run scripts/install_deps.sh (it installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
        )


class Rows(HTMLParser):
    """Table rows of the DOM: (attributes of the <tr>, its text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, Any], str]] = []
        self._open: tuple[dict[str, Any], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._open = (dict(attrs), [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._open is not None:
            attrs, text = self._open
            self.rows.append((attrs, " ".join(" ".join(text).split())))
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)

    def find(self, cls: str, **attrs: Any) -> str:
        for row_attrs, text in self.rows:
            if row_attrs.get("class") == cls and all(row_attrs.get(k) == str(v) for k, v in attrs.items()):
                return text
        raise AssertionError(f"no <tr class={cls} {attrs}> in the page; rows: {self.rows}")


def test_page_shows_stuck_job_error_name_and_task_progress(scenario) -> None:
    dispatcher, ids = scenario
    url = f"{dispatcher.url}/?refresh=0"
    dumped = chromium("--dump-dom", url)
    assert dumped.returncode == 0 and "<html" in dumped.stdout, dumped.stderr[-2000:]
    dom = Rows()
    dom.feed(dumped.stdout)

    stuck = dom.find("stuck", **{"data-panda-id": ids["stuck"]})
    assert "sent" in stuck and "60 min" in stuck and "wn002.cern.ch" in stuck and "SENT_TIMEOUT" in stuck
    error = dom.find("error-row", **{"data-code": 1150})
    assert "LOOPING_JOB" in error and "(attempt 2)" in error  # the latest diagnostic, not the first
    assert error.split()[:6] == ["1150", "LOOPING_JOB", "Looping", "job", "killed", "by"]
    task = dom.find("task", **{"data-task-id": ids["task"]})
    assert "40 %" in task and "P09-reco-W14" in task
    assert 'id="history"' in dumped.stdout and "as of " in dumped.stdout
    site = dom.find("site")
    assert site.split()[:2] == ["CERN-PROD", "2"] and "CERN-PROD_COMPASS" in site

    shot = artifact_dir() / "monitor-page.png"
    taken = chromium("--window-size=1280,1500", f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    keep_artifact(shot)


def test_job_page_and_filters(scenario) -> None:
    dispatcher, ids = scenario
    dumped = chromium("--dump-dom", f"{dispatcher.url}/jobs?error=1150")
    dom = Rows()
    dom.feed(dumped.stdout)
    listed = [attrs.get("data-panda-id") for attrs, _ in dom.rows if attrs.get("class") == "job"]
    assert listed == [str(ids["looping"])]
    job = chromium("--dump-dom", f"{dispatcher.url}/jobs/{ids['looping']}").stdout
    dom = Rows()
    dom.feed(job)
    updates = [text for attrs, text in dom.rows if attrs.get("class") == "update"]
    assert len(updates) == 4 and "failed" in updates[-1] and "wn002.cern.ch" in updates[-1]
    assert "jobPars" in job and "--run 275678" in job  # the spec as a table, one field a row
