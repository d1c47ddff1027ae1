"""The broker's radical.saga shells: /bin/sh instead of the user's $SHELL, a short PTY flush (real radical.saga)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from compass_pilot.config import load_site_config
from harvester_plugins import saga_shell
from harvester_plugins.batch_broker import BrokerBatchBackend

pty_process = pytest.importorskip("radical.saga.utils.pty_process", reason="radical.saga is a CI dependency")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restored_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """tune() patches radical.saga for the whole process: undo it after the test."""
    monkeypatch.setattr(pty_process.PTYProcess, "flush", pty_process.PTYProcess.flush)


def test_tune_sets_the_shell_and_a_short_flush(restored_flush: None) -> None:
    env = {"SHELL": "/bin/bash"}
    assert saga_shell.tune(env, quiet=0.02)
    assert env["SHELL"] == "/bin/sh"
    assert pty_process.PTYProcess.flush.__compass_quiet__ == 0.02


def test_radicals_own_window_or_zero_leaves_flush_alone(restored_flush: None) -> None:
    original = pty_process.PTYProcess.flush
    assert saga_shell.tune({}, quiet=0.1)  # 0.1 is radical.saga's own: nothing to shorten
    assert saga_shell.tune({}, quiet=0.0)  # 0 would make read() wait for data forever
    assert pty_process.PTYProcess.flush is original


def test_unknown_internals_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other:  # a radical.saga whose PTYProcess has no read(): not the version this knows
        def flush(self) -> None: ...

    monkeypatch.setattr(pty_process, "PTYProcess", Other)
    env = {"SHELL": "/bin/bash"}
    assert not saga_shell.tune(env, quiet=0.01)
    assert env == {"SHELL": "/bin/bash"} and Other.flush.__name__ == "flush"


def test_the_short_flush_drains_what_the_shell_printed(restored_flush: None) -> None:
    saga_shell.tune({}, quiet=0.01)
    shell = pty_process.PTYProcess("/bin/sh")
    try:
        shell.write("echo first; echo second-line\n")
        assert shell.find(["first\n"], timeout=10)[0] == 0  # "second-line" is read or on its way
        shell.flush()  # drops it: the shell's last output before the next command
        assert shell.cache == ""
        shell.write("echo after\n")
        n, seen = shell.find(["after\n"], timeout=10)
        assert n == 0 and "second-line" not in seen  # nothing from before the flush came back
    finally:
        shell.finalize()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        try:
            kids = Path(f"/proc/{cur}/task/{cur}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def test_the_brokers_shells_are_sh_not_the_users_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/bin/bash")  # the daemon's user logs in with bash
    site = load_site_config(ROOT / "site_configs" / "local.yaml")
    hpc = dataclasses.replace(site.hpc, batch_url="fork://localhost", shared_dir=str(tmp_path))
    site = dataclasses.replace(site, hpc=hpc)
    backend = BrokerBatchBackend(site)
    try:
        backend.preflight()  # opens the job service: radical.saga's shells now run under the broker
        broker = backend.broker_pid
        assert broker is not None
        shells = []  # radical.saga's interactive shells: (command line, the SHELL they were started as)
        for pid in _descendants(broker):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-i" in command:
                shells.append((command, [e for e in environ if e.startswith(b"SHELL=")]))
        assert shells  # the job service's shells are there, started as /bin/sh, not the user's bash
        assert all(shell == [b"SHELL=/bin/sh"] for _, shell in shells), shells
    finally:
        backend.close()
    assert os.environ["SHELL"] == "/bin/bash"  # the daemon's own environment is untouched
