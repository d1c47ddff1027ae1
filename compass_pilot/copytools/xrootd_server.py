"""A real XRootD server for the tests and ``compass-pilot demo --xrootd`` / ``--chain``.

``xrootd`` refuses to run as root, so when we are root it runs as the ``xrootd`` user
(``-R xrootd``) over an export dir that user owns; it loads the adler32 checksum
plug-in (``xrootd.chksum adler32``) so that ``xrdfs query checksum`` answers as EOS
does.  ``xrd.port any`` lets the server pick a free port itself — no race with other
test runs for a port we picked — and we learn it, and that the server is ready, from
the ``initialization completed`` line it writes to stderr: no polling.

XRootD has no directive to bind one interface (``xrd.network`` only tunes DNS,
keep-alive and routing; ``xrd.port``'s ``if`` is a host-name condition), so it listens
on ``*:<port>``.  ``xrd.allow host localhost`` makes it refuse every client that is not
on loopback, and we only ever talk to it through 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SERVER_USER = "xrootd"
_READY_RE = re.compile(r"xrootd \S+@\S+:(\d+) initialization completed")
_FAILED_RE = re.compile(r"initialization failed", re.IGNORECASE)


class XRootDServerError(RuntimeError):
    """The server could not be started: the message says why (binary, user, permissions, its log)."""


def _traversable_by(path: Path, uid: int, gid: int) -> Path | None:
    """The first ancestor of ``path`` the given user cannot enter, or None."""
    for parent in [path, *path.parents]:
        try:
            info = parent.stat()
        except OSError:
            return parent
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return parent
    return None


class XRootDServer:
    """``with XRootDServer(export_dir) as server:`` → ``server.url`` (``root://127.0.0.1:PORT/``).

    ``root://127.0.0.1:PORT//castor/x`` is then ``<export_dir>/castor/x``.  Without an
    export dir the server gets a fresh one under the temp dir, removed on stop; a given
    export dir is kept.  Its private state (config, admin and pid files, log) always lives
    in a temp dir of its own.  ``data`` is the export dir (the demo seeds it).
    """

    def __init__(
        self, root_dir: Path | str | None = None, *, port: int = 0, checksum: bool = True, start_timeout: float = 15.0
    ) -> None:
        self.owned = root_dir is None
        self.data = Path(root_dir).absolute() if root_dir is not None else None
        self.port = port
        self.checksum = checksum
        self.start_timeout = start_timeout
        self.url = ""
        self.state: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_lines: list[str] = []
        self._drain: threading.Thread | None = None
        self._user: pwd.struct_passwd | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> XRootDServer:
        """Start the server and wait (bounded by ``start_timeout``) until it says it is ready."""
        binary = shutil.which("xrootd")
        if binary is None:
            raise XRootDServerError("xrootd not found on PATH (install Debian's xrootd-server)")
        as_root = os.geteuid() == 0
        if as_root:
            try:
                self._user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise XRootDServerError(
                    f"xrootd refuses to run as root and there is no {SERVER_USER!r} user to run it as "
                    "(Debian's xrootd-server package creates it)"
                ) from None
        self.state = Path(tempfile.mkdtemp(prefix="compass-xrootd-state-"))
        if self.data is None:
            self.data = Path(tempfile.mkdtemp(prefix="compass-xrootd-export-"))
        self.data.mkdir(parents=True, exist_ok=True)
        admin = self.state / "admin"
        admin.mkdir()
        if self._user is not None:
            self.give_to_server(self.state)
            self.give_to_server(self.data)
            blocked = _traversable_by(self.data, self._user.pw_uid, self._user.pw_gid)
            if blocked is not None:
                self._cleanup()
                raise XRootDServerError(
                    f"the {SERVER_USER} user cannot enter {blocked} (mode {oct(blocked.stat().st_mode & 0o777)}) "
                    f"on the way to the export dir {self.data}; use a dir under a world-traversable parent"
                )
        config = self.state / "xrootd.cfg"
        lines = [
            f"xrd.port {self.port or 'any'}",
            "xrd.allow host localhost",
            "all.export /",
            f"oss.localroot {self.data}",
            f"all.adminpath {admin}",
            f"all.pidpath {admin}",
        ]
        if self.checksum:
            lines.append("xrootd.chksum adler32")
        config.write_text("\n".join(lines) + "\n")
        cmd = [binary, "-c", str(config), "-w", str(self.state)]
        if self._user is not None:
            cmd += ["-R", SERVER_USER]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.state,
            start_new_session=True,
        )
        try:
            port = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.port = port
        self.url = f"root://127.0.0.1:{port}/"
        # keep draining stderr so a chatty server never blocks on a full pipe
        self._drain = threading.Thread(target=self._drain_stderr, name="xrootd-stderr", daemon=True)
        self._drain.start()
        log.info("xrootd pid %d serving %s at %s", self.proc.pid, self.data, self.url)
        return self

    def _wait_ready(self) -> int:
        """Read the server's stderr until it reports its port, fails, or the start timeout passes."""
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + self.start_timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise XRootDServerError(
                        f"xrootd did not report ready within {self.start_timeout:.0f} s: {self.log_tail()}"
                    )
                if not sel.select(remaining):
                    continue
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    code = self.proc.wait(5)
                    raise XRootDServerError(f"xrootd exited with {code} during start-up: {self.log_tail()}")
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    self._log_lines.append(line)
                    if match := _READY_RE.search(line):
                        return int(match.group(1))
                    if _FAILED_RE.search(line):
                        raise XRootDServerError(f"xrootd start-up failed: {self.log_tail()}")

    def _drain_stderr(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        for raw in proc.stderr:
            self._log_lines.append(raw.decode(errors="replace").rstrip("\n"))
            del self._log_lines[:-500]  # bounded memory: the tail is what explains a failure

    def log_tail(self, n: int = 20) -> str:
        """The server's last log lines, for error messages."""
        return "\n".join(self._log_lines[-n:]) or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; remove the state dir (and an export dir we created)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a test may have frozen it
                    proc.terminate()
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                except ProcessLookupError:
                    pass
            if self._drain is not None:
                self._drain.join(5)
            if proc.stderr is not None:
                proc.stderr.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None
        if self.owned and self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)

    @property
    def export(self) -> Path | None:
        """The export dir (``oss.localroot``): ``root://…//a/b`` is ``export / "a/b"``; same as ``data``."""
        return self.data

    @property
    def pid(self) -> int | None:
        """The server's process id (tests freeze it with SIGSTOP to play a hung server)."""
        return self.proc.pid if self.proc is not None else None

    def give_to_server(self, path: Path | str) -> None:
        """Hand a file or dir tree to the server's user, so it can serve and write there (root only)."""
        if self._user is None:
            return
        uid, gid = self._user.pw_uid, self._user.pw_gid
        path = Path(path)
        os.chown(path, uid, gid)
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)

    def __enter__(self) -> XRootDServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
