"""The payload runner with real processes: exit codes, signals, walltime, kills, logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from compass_pilot.errors import ErrorCode
from compass_pilot.payload import PayloadProcess, run_payload


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"]}


def test_success_logs_and_usage(tmp_path: Path) -> None:
    script = "echo out; echo err >&2; python3 -c 'sum(range(3_000_000)); b = bytearray(40_000_000)'"
    result = run_payload(["bash", "-c", script], tmp_path, _env(), sample_interval=1)
    assert result.exit_code == 0 and result.signal is None and result.ok
    assert result.error() is None
    assert (tmp_path / "payload.stdout").read_text() == "out\n"
    assert (tmp_path / "payload.stderr").read_text() == "err\n"
    assert result.cpu_seconds > 0
    assert result.max_rss > 30_000_000  # the 40 MB bytearray was seen


def test_exit_code_maps_to_payload_failed(tmp_path: Path) -> None:
    result = run_payload(["bash", "-c", "exit 7"], tmp_path, _env())
    assert result.exit_code == 7
    assert result.error() == (ErrorCode.PAYLOAD_FAILED, "payload exited with code 7")


def test_crash_by_signal(tmp_path: Path) -> None:
    result = run_payload(["bash", "-c", "kill -SEGV $$"], tmp_path, _env())
    assert result.signal == signal.SIGSEGV and result.exit_code is None
    code, diag = result.error()
    assert code == ErrorCode.SIGSEGV and "SIGSEGV" in diag


def test_walltime_kills_the_whole_group(tmp_path: Path) -> None:
    # the child ignores SIGTERM: only SIGKILL after the grace period ends it
    script = "trap '' TERM; (trap '' TERM; sleep 60) & echo $! > child.pid; sleep 60"
    start = time.monotonic()
    result = run_payload(["bash", "-c", script], tmp_path, _env(), walltime=1, grace=1, sample_interval=30)
    elapsed = time.monotonic() - start
    assert result.killed_by == "walltime" and result.timed_out
    assert result.error()[0] == ErrorCode.BATCH_TIME_LIMIT
    assert elapsed < 10
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_external_kill_is_reported_as_signal(tmp_path: Path) -> None:
    proc = PayloadProcess(["sleep", "30"], tmp_path, _env()).start()
    assert proc.wait(0.2) is None
    os.kill(proc.pid, signal.SIGKILL)
    result = proc.wait(10)
    assert result is not None and result.signal == signal.SIGKILL
    assert result.error()[0] == ErrorCode.SIGKILL


def test_server_kill(tmp_path: Path) -> None:
    proc = PayloadProcess(["sleep", "30"], tmp_path, _env(), grace=1).start()
    proc.kill("server")
    result = proc.wait(10)
    assert result is not None and result.killed_by == "server"
    assert result.error()[0] == ErrorCode.KILLED_BY_SERVER


def test_exit_status_survives_in_a_file_for_a_restarted_pilot(tmp_path: Path) -> None:
    from compass_pilot.payload import read_exitcode

    run_payload(["bash", "-c", "exit 7"], tmp_path, _env())
    assert read_exitcode(tmp_path) == 7
    run_payload(["bash", "-c", "kill -SEGV $$"], tmp_path, _env())
    assert read_exitcode(tmp_path) == 128 + signal.SIGSEGV
    proc = PayloadProcess(["sleep", "30"], tmp_path, _env(), grace=1).start()
    proc.kill("pilot")
    proc.wait(10)
    assert read_exitcode(tmp_path) is None  # killed with its wrapper: no normal end recorded


def test_tree_rss_counts_grandchildren_and_odd_command_names(tmp_path: Path) -> None:
    """Both ways of measuring a payload's memory (the tree walk and the session scan of its
    fallback): a grandchild's memory counts, a command name with ') ' parses."""
    from compass_pilot.payload import _rss_by_session, _tree_rss

    odd = tmp_path / "a b) c"
    odd.symlink_to(Path(sys.executable).resolve())
    hold = "import time; b = bytearray(60_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    proc = subprocess.Popen(
        ["bash", "-c", f'"{odd}" -c "{hold}" & wait'], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _rss_by_session().get(proc.pid, 0) < 60_000_000:
            time.sleep(0.2)
        rss = _rss_by_session().get(proc.pid, 0)
        assert 60_000_000 <= rss < 200_000_000
        walked = _tree_rss(proc.pid)
        assert 60_000_000 <= walked < 200_000_000 and abs(walked - rss) < 10_000_000
        assert _rss_by_session().get(os.getsid(0), 0) > 0  # our own session is there too
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
