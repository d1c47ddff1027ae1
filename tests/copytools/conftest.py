"""Fixtures for the copytool tests: a real xrootd (session-wide) and helpers to run code as another user."""

from __future__ import annotations

import os
import pickle
import pwd
import select
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compass_pilot import errors
from compass_pilot.copytools.xrootd_server import XRootDServer
from compass_pilot.errors import PilotError


def require_xrootd_binaries() -> None:
    """The XRootD tests need the real server and client: fail (never skip) when they are missing."""
    missing = [name for name in ("xrootd", "xrdcp", "xrdfs") if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not on PATH: install xrootd-server and xrootd-client (scripts/install_deps.sh)"
        )


@pytest.fixture(scope="session")
def xrootd_server() -> Iterator[XRootDServer]:
    require_xrootd_binaries()
    with XRootDServer() as server:
        yield server


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir other users can enter (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="compass-copytools-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as_nobody(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn`` in a forked child with the uid/gid of ``nobody``; return its result or re-raise its exception.

    Root ignores file permissions, so this is how a root test run meets a real EACCES.
    """
    if os.geteuid() != 0:
        pytest.fail("permission tests need root (to switch to nobody); CI runs the suite as root")
    nobody = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                outcome: tuple[str, Any] = ("ok", fn())
            except PilotError as exc:  # rebuilt in the parent: pickling would lose the code
                outcome = ("pilot", (type(exc).__name__, exc.diag, exc.code))
            except BaseException as exc:
                outcome = ("raised", RuntimeError(f"{type(exc).__name__}: {exc}"))
            data = pickle.dumps(outcome)
        except BaseException as exc:
            data = pickle.dumps(("raised", RuntimeError(f"child setup failed: {exc!r}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_fd)
    try:
        chunks = []
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                ready, _, _ = select.select([pipe], [], [], timeout)
                if not ready:
                    os.kill(pid, 9)
                    pytest.fail(f"child running as nobody did not finish within {timeout} s")
                chunk = pipe.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "pilot":
        name, diag, code = value
        raise getattr(errors, name)(diag, code)
    if kind == "raised":
        raise value
    return value
