"""Fixtures for the calibration DB tests: real MariaDB snapshots built once per session.

The product itself starts the private servers (that is what is under test), so there is
no server script here; the session fails (never skips) when MariaDB is not installed.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import calibdb
from calibdb.commands import add_calibdb_args, cmd_calibdb
from compass_pilot.config import CalibDBSection
from compass_pilot.errors import CalibDBError


def require_mariadb() -> None:
    """Fail clearly when mariadbd or mariadb-install-db is missing."""
    try:
        calibdb.backends.find_mariadbd()
    except CalibDBError as exc:
        pytest.fail(f"{exc}: apt-get install mariadb-server-core mariadb-client")
    if shutil.which("mariadb-install-db") is None:
        pytest.fail("mariadb-install-db not on PATH: apt-get install mariadb-server-core")


def run_cli(*argv: str) -> int:
    """``compass-pilot calibdb …`` through the area's own CLI functions."""
    import argparse

    parser = argparse.ArgumentParser(prog="compass-pilot calibdb")
    add_calibdb_args(parser)
    return cmd_calibdb(parser.parse_args(list(argv)))


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo snapshots: a MariaDB datadir (cached builder), a tar (via the CLI) and an SQLite file."""
    require_mariadb()
    cache = tmp_path_factory.mktemp("calib-snapshots")
    tar = cache / "calib.tar"
    assert run_cli("snapshot", "--out", str(tar)) == 0
    return {
        "mariadb": calibdb.demo_snapshot("mariadb", cache),
        "sqlite": calibdb.demo_snapshot("sqlite", cache),
        "tar": tar,
    }


def cfg(snapshot: Path, scratch: Path, backend: str = "mariadb", **kw: object) -> CalibDBSection:
    kw.setdefault("start_timeout", 30.0)
    return CalibDBSection(backend=backend, snapshot=str(snapshot), scratch_dir=str(scratch), **kw)  # type: ignore[arg-type]


def servers(scratch: Path) -> list[psutil.Process]:
    """Live mariadbd processes whose command line points into ``scratch``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "mariadbd" in cmd and str(scratch) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_leftover_servers(tmp_path: Path) -> Iterator[None]:
    """Whatever a test does, no server of its scratch dir outlives it."""
    yield
    leftovers = servers(tmp_path)
    for proc in leftovers:
        proc.kill()
    assert not leftovers, f"mariadbd left running: {[p.pid for p in leftovers]}"
