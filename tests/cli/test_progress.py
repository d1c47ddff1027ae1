"""The daemon's periodic progress line and its figures (state file, textfile collector)."""

from __future__ import annotations

from types import SimpleNamespace

from compass_pilot.progress import DaemonProgress


def _daemon(finished: int, failed: int, running: int) -> SimpleNamespace:
    finals = {i: "finished" for i in range(finished)} | {1000 + i: "failed" for i in range(failed)}
    entries = {i: SimpleNamespace(final="") for i in range(running)} | {-1: SimpleNamespace(final="finished")}
    return SimpleNamespace(final_states=finals, submissions={"s1": SimpleNamespace(done=False, jobs=entries)})


def test_one_line_every_interval_not_every_round() -> None:
    now = [0.0]
    progress = DaemonProgress(interval=300, clock=lambda: now[0])
    daemon = _daemon(412, 3, 97)
    lines = []
    for _ in range(25):  # 25 rounds of a 30 s poll: 750 s
        now[0] += 30
        lines.append(progress.tick(daemon, 30))
    said = [line for line in lines if line]
    assert said == ["412/512 finished, 3 failed, 97 in flight in 1 submission; next poll in 30 s"] * 2
    figures = progress.figures(daemon)
    assert figures["rounds"] == 25 and figures["in_flight_jobs"] == 97 and figures["jobs_failed"] == 3
